"""The ``rsfiqa`` command: LightningCLI ``fit``/``validate``/``test``/``predict`` over
:class:`RSFIQAModule` and :class:`ShardDataModule`, plus non-Lightning commands (``score`` ...).

Configs are YAML parsed in OmegaConf mode, so a config may interpolate its own values (for
example ``img_size: ${data.image_size}``); interpolations are resolved when the file is read, so
command-line overrides do not propagate through them. ``data.num_regions`` is linked to
``model.num_regions`` (set L once, under ``data``). Default callbacks, each configurable under its
own key: ``checkpoint`` (ModelCheckpoint on val SRCC, max, plus ``last.ckpt``), ``early_stopping``
(EarlyStopping on val SRCC, max; the paper uses early stopping but gives no patience, ours is a
config value), ``lr_monitor`` and ``prediction_writer`` (``predictions.csv`` in the run directory).
Loggers: TensorBoard and CSV, writing into one run directory ``runs/<name>/version_N``.
``validate``/``test``/``predict`` with ``--ckpt_path`` build the model from the checkpoint's
hyperparameters with ``pretrained=None``: the trained backbone comes from the checkpoint.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable

from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from rsfiqa.callbacks import PredictionWriter
from rsfiqa.data.datamodule import ShardDataModule
from rsfiqa.module import RSFIQAModule

# name -> ("module:function" called with the remaining arguments, one-line description)
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("rsfiqa.score:main", "Score images or a folder of images with a trained checkpoint."),
    "splits": ("rsfiqa.eval.splits:main", "Train and test over the 10 random splits; report mean and std."),
    "ablate": ("rsfiqa.eval.ablate:main", "Run the paper's ablation configs (Tables 3-6) and tabulate them."),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
EVAL_COMMANDS = ("validate", "test", "predict")
SEED_DEFAULT = 0
EARLY_STOPPING_PATIENCE = 20
RUNS_DIR = "runs"
OMEGACONF = {"parser_mode": "omegaconf"}


def default_loggers(name: str = "rsfiqa") -> list[dict[str, Any]]:
    """CSV and TensorBoard loggers under ``runs/<name>`` (CSV first: it wants to create the run dir)."""
    return [{"class_path": f"lightning.pytorch.loggers.{cls}", "init_args": {"save_dir": RUNS_DIR, "name": name}}
            for cls in ("CSVLogger", "TensorBoardLogger")]


def next_version(save_dir: str | Path, name: str) -> str:
    """``version_N`` with N one above the highest existing run under ``save_dir/name``."""
    root = Path(save_dir) / name
    taken = [int(p.name.split("_", 1)[1]) for p in root.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return f"version_{max(taken, default=-1) + 1}"


def share_logger_version(loggers: Any) -> None:
    """Give loggers that all write to the same ``save_dir/name`` without an explicit version one
    shared version, so TensorBoard events, metrics.csv, checkpoints and config land in one run dir."""
    if not isinstance(loggers, list) or len(loggers) < 2:
        return
    args = [logger.get("init_args") for logger in loggers]
    places = {(a.get("save_dir"), a.get("name")) for a in args if a is not None}
    if None in args or len(places) != 1 or any(a.get("version") is not None for a in args):
        return
    save_dir, name = places.pop()
    version = next_version(save_dir, name or "")
    for a in args:
        a["version"] = version


class RSFIQACLI(LightningCLI):
    """LightningCLI with RSFIQA's callbacks, loggers and argument links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_regions", "model.num_regions")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.set_defaults({
            "checkpoint.monitor": "val/srcc", "checkpoint.mode": "max", "checkpoint.save_last": True,
            "checkpoint.filename": "epoch{epoch:03d}-srcc{val/srcc:.4f}", "checkpoint.auto_insert_metric_name": False,
            "early_stopping.monitor": "val/srcc", "early_stopping.mode": "max",
            "early_stopping.patience": EARLY_STOPPING_PATIENCE,
            "lr_monitor.logging_interval": "epoch",
            "trainer.default_root_dir": RUNS_DIR, "trainer.logger": default_loggers(),
        })

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        share_logger_version(config.get("trainer", {}).get("logger"))
        if self.subcommand in EVAL_COMMANDS and config.get("ckpt_path"):
            # the checkpoint holds the trained backbone: do not fetch ImageNet weights first
            config.model.pretrained = None


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


def run_cli(args: list[str] | None) -> RSFIQACLI:
    """Run a Lightning command (fit/validate/test/predict); ``args=None`` reads ``sys.argv``."""
    return RSFIQACLI(RSFIQAModule, ShardDataModule,
                     parser_kwargs={**OMEGACONF, **{c: dict(OMEGACONF) for c in LIGHTNING_COMMANDS}},
                     save_config_kwargs={"overwrite": True}, seed_everything_default=SEED_DEFAULT,
                     auto_configure_optimizers=False, args=args)


def main(args: list[str] | None = None) -> Any:
    """Entry point of the ``rsfiqa`` console script (``args=None``: the command line)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_COMMANDS:
        return extra_command(argv[0])(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        try:
            run_cli(["--help"] if args is not None or not argv else None)
        finally:
            print("\n" + extra_commands_help())
    return run_cli(None if args is None else argv)


if __name__ == "__main__":
    main()
