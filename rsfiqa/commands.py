"""The ``rsfiqa`` console script: the commands outside Lightning (``score`` ...) and the dispatch to them.

Each command is imported only when it runs, and the Lightning commands (``fit``/``validate``/``test``/
``predict``, :mod:`rsfiqa.cli`) likewise: ``rsfiqa score`` never imports Lightning or torchmetrics,
whose import alone costs the scoring process memory (README, "Speed").
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

# name -> ("module:function" called with the remaining arguments, one-line description)
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("rsfiqa.inference.score_cli:main", "Score images or a folder of images (shipped model, or --ckpt)."),
    "models": ("rsfiqa.inference.models_command:main", "List the shipped models and their measured accuracy."),
    "splits": ("rsfiqa.experiments.splits:main", "Train and test over the 10 random splits; report mean and std."),
    "ablate": ("rsfiqa.experiments.ablate:main", "Run the paper's ablation configs (Tables 3-6) and tabulate them."),
    "probe": ("rsfiqa.experiments.rsa_probe:main", "RSA diagnostics of a trained split: bias scale, test SRCC without "
                                            "the bias or with other images' descriptions."),
}
LIGHTNING_CLI = "rsfiqa.cli"  # imported by name, only for a Lightning command (or --help)


def extra_command(name: str) -> Callable[[list[str]], Any]:
    """The ``main`` function of an extra command, imported only now; a clear error if it is absent."""
    target, _ = EXTRA_COMMANDS[name]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not module_name.startswith(err.name):
            raise  # the command exists but one of its own imports is missing: show the real error
        raise SystemExit(f"rsfiqa {name}: this command is not available in this installation "
                         f"({module_name} cannot be imported: {err})") from err
    return getattr(module, func_name)


def extra_commands_help() -> str:
    width = max(len(n) for n in EXTRA_COMMANDS)
    lines = [f"    {name:<{width}}  {desc}" for name, (_, desc) in EXTRA_COMMANDS.items()]
    return "more commands (rsfiqa COMMAND --help for their options):\n" + "\n".join(lines)


def main(args: list[str] | None = None) -> Any:
    """Entry point of the ``rsfiqa`` console script (``args=None``: the command line): an extra command
    runs without importing Lightning; anything else goes to :func:`rsfiqa.cli.main`."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_COMMANDS:
        return extra_command(argv[0])(argv[1:])
    return importlib.import_module(LIGHTNING_CLI).main(args)
