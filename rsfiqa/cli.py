"""The ``rsfiqa`` command: LightningCLI ``fit``/``validate``/``test``/``predict`` over
:class:`RSFIQAModule` and :class:`ShardDataModule`, plus non-Lightning commands (``score`` ...), which the
console script (:mod:`rsfiqa.commands`) runs without importing this module.

Configs are YAML parsed in OmegaConf mode, so a config may interpolate its own values (for
example ``img_size: ${data.image_size}``); interpolations are resolved when the file is read, so
command-line overrides do not propagate through them. A config whose top-level ``config:`` key names
another file (relative to it) is an overlay: that base is read first (``configs/swin.yaml`` over
``configs/paper.yaml``). ``data.num_regions`` is linked to
``model.net.num_regions`` (set L once, under ``data``). Default callbacks, each configurable under its
own key: ``checkpoint`` (ModelCheckpoint on val SRCC, max), ``last_checkpoint`` (``last.ckpt``
rewritten after every epoch, for ``--ckpt_path`` resumption: Lightning's own ``save_last`` only
refreshes it when a new best is saved), ``early_stopping``
(EarlyStopping on val SRCC, max; the paper uses early stopping but gives no patience, ours is a
config value), ``lr_monitor``, ``prediction_writer`` (``predictions.csv`` in the run directory),
``test_report`` (``rsfiqa test``: ``results.csv``/``results.md``, per-dataset predictions and scatter
plots; ``--test_report.out_dir`` picks the folder) and ``curves`` (``curves.png`` after ``fit``).
Loggers: TensorBoard and CSV, writing into one run directory ``runs/<name>/version_N``.
With ``--ckpt_path`` (evaluation, or resuming ``fit``) the model is built from the checkpoint's
hyperparameters with ``pretrained=None``: the trained backbone comes from the checkpoint.
``test`` runs on one device (each test set is evaluated once, by one process); other device
settings are overridden with a message.

Resuming ``fit --ckpt_path B`` with a config whose network settings (``model.net``, except
``pretrained``) differ from B's is refused, naming the differing keys; ``--take_checkpoint_network
true`` takes B's network instead. A user error (malformed YAML, a checkpoint that is no checkpoint,
a missing or empty shard directory, an output folder that cannot be created or written — checked before
anything is built —, a full disk) ends with one ``rsfiqa <command>: error: ...`` line
and exit status 2; ``--debug`` shows the traceback (``rsfiqa_core.usererrors``).
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from rsfiqa.checkpoint import CheckpointError, read_checkpoint_file
from rsfiqa.commands import EXTRA_COMMANDS, extra_command, extra_commands_help
from rsfiqa.data.datamodule import ShardDataModule
from rsfiqa.eval.callbacks import TestReport, TrainingCurves
from rsfiqa.model import registry
from rsfiqa.model.feature_cache import CacheEntryError
from rsfiqa.module import RSFIQAModule
from rsfiqa.predictions import PredictionWriter
from rsfiqa_core.contract import ContractError
from rsfiqa_core.imageio import ImageError
from rsfiqa_core.usererrors import SettingError, check_output_folder, pop_debug, run_reporting

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
SEED_DEFAULT = 0
EARLY_STOPPING_PATIENCE = 20
RUNS_DIR = "runs"
OMEGACONF = {"parser_mode": "omegaconf"}
EXIT_USER_ERROR = 2  # as for a usage error: a user error ends before (or instead of) any result
TAKE_CHECKPOINT_NETWORK = "take_checkpoint_network"
NOT_COMPARED_ON_RESUME = ("pretrained",)  # the checkpoint holds the trained weights


class ConfigFileError(ValueError):
    """A config file that cannot be read as YAML (the message names the file)."""


# Errors a user can cause and fix (one line); anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ConfigFileError, CheckpointError, ContractError, ImageError, SettingError, CacheEntryError,
                   OSError)
ON_INTERRUPT = "checkpoints/last.ckpt of the run holds the last finished epoch; resume with --ckpt_path"


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


class RSFIQAParser(LightningArgumentParser):
    """A usage error (a malformed override, a missing config file) shows the error and the ``--help`` tip,
    not the ~140-line usage of every option."""

    def print_usage(self, file: Any = None) -> None:
        return None


class RSFIQACLI(LightningCLI):
    """LightningCLI with RSFIQA's callbacks, loggers and argument links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_regions", "model.net.num_regions")
        parser.add_argument(f"--{TAKE_CHECKPOINT_NETWORK}", type=bool, default=False,
                            help="fit --ckpt_path: train the checkpoint's network even where the config's "
                                 "model.net differs (default: refuse, naming the differing keys)")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(TestReport, "test_report")
        parser.add_lightning_class_args(TrainingCurves, "curves")
        parser.set_defaults({
            "checkpoint.monitor": "val/srcc", "checkpoint.mode": "max", "checkpoint.save_last": False,
            "checkpoint.filename": "epoch{epoch:03d}-srcc{val/srcc:.4f}", "checkpoint.auto_insert_metric_name": False,
            "last_checkpoint.monitor": None, "last_checkpoint.save_top_k": 1, "last_checkpoint.filename": "last",
            "early_stopping.monitor": "val/srcc", "early_stopping.mode": "max",
            "early_stopping.patience": EARLY_STOPPING_PATIENCE,
            "lr_monitor.logging_interval": "epoch",
            "trainer.default_root_dir": RUNS_DIR, "trainer.logger": default_loggers(),
        })

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (readable; on ``fit``, the configured network), then merge the
        checkpoint's hyperparameters into the config as Lightning does, in the current layout
        (:func:`checkpoint_model_options`: checkpoints of earlier versions load too)."""
        command = self.config.get("subcommand")
        ckpt_path = self.config[command].get("ckpt_path") if command else None
        if not ckpt_path:
            return
        hparams = read_checkpoint_file(ckpt_path).get("hyper_parameters", {})
        config = self.config[command]
        if command == "fit" and not config.get(TAKE_CHECKPOINT_NETWORK):
            check_resume_network(config.model.net, hparams, ckpt_path)
        if hparams:
            self.config = self.parser.parse_object({command: {"model": checkpoint_model_options(hparams)}},
                                                   self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        share_logger_version(config.get("trainer", {}).get("logger"))
        check_output_folders(config)
        if config.get("ckpt_path"):
            # the checkpoint holds the trained backbone: do not fetch ImageNet weights first
            config.model.net.pretrained = None
        if self.subcommand == "test":
            use_one_device(config.trainer)


def checkpoint_model_options(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters`` as ``model`` options of this version: the module's own
    arguments, and ``net`` with every :class:`~rsfiqa.model.registry.NetOptions` key (unset: None)."""
    arguments = set(inspect.signature(RSFIQAModule.__init__).parameters) - {"self", "net"}
    return {**{k: v for k, v in hparams.items() if k in arguments},
            "net": registry.options_record(registry.config_from_hparams(hparams))}


def check_output_folders(config: Any) -> None:
    """The run's output folders (``trainer.default_root_dir``, each logger's ``save_dir``, ``test_report.out_dir``)
    are created and test-written before anything is built (a one-line error otherwise)."""
    trainer = config.get("trainer", {})
    loggers = trainer.get("logger")
    folders = [("--trainer.default_root_dir", trainer.get("default_root_dir"))]
    folders += [("--trainer.logger save_dir", (logger.get("init_args") or {}).get("save_dir"))
                for logger in (loggers if isinstance(loggers, list) else []) if hasattr(logger, "get")]
    folders.append(("--test_report.out_dir", config.get("test_report", {}).get("out_dir")))
    for option, folder in folders:
        if folder:
            check_output_folder(option, folder)


def network_differences(configured: Any, hparams: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``model.net`` keys whose configured value differs from the checkpoint's: key -> (config, checkpoint)."""
    if isinstance(configured, Namespace):
        configured = configured.as_dict()
    mine = registry.config_record(registry.as_config(configured))
    theirs = registry.config_record(registry.config_from_hparams(hparams) if hparams else registry.as_config({}))
    return {key: (mine.get(key), theirs.get(key)) for key in sorted(set(mine) | set(theirs))
            if key not in NOT_COMPARED_ON_RESUME and _plain(mine.get(key)) != _plain(theirs.get(key))}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def check_resume_network(configured: Any, hparams: dict[str, Any], ckpt_path: str) -> None:
    """Refuse resuming a checkpoint whose network differs from the configured one (module docstring)."""
    differ = network_differences(configured, hparams)
    if differ:
        listed = ", ".join(f"model.net.{k}: config {a!r}, checkpoint {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(f"--ckpt_path {ckpt_path}: the checkpoint's network differs from the configured one "
                              f"({listed}); fix the config, or add --{TAKE_CHECKPOINT_NETWORK} true to train the "
                              f"checkpoint's network")


def device_count(devices: Any) -> int | None:
    """Devices a Lightning ``devices`` setting asks for (None: "auto" or -1, i.e. all there are)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.lstrip("-").isdigit() and int(text) >= 0 else None


def use_one_device(trainer_config: Any) -> None:
    """Set one device on one node for ``rsfiqa test``, saying so when the config asked for more."""
    devices, nodes = trainer_config.get("devices"), trainer_config.get("num_nodes", 1)
    if device_count(devices) != 1 or nodes != 1:
        print(f"rsfiqa test: testing on one device (the config asks for devices={devices!r}, num_nodes={nodes}); "
              f"each test set is evaluated once, by one process")
        trainer_config.devices, trainer_config.num_nodes = 1, 1


def run_cli(args: list[str] | None) -> RSFIQACLI:
    """Run a Lightning command (fit/validate/test/predict); ``args=None`` reads ``sys.argv``."""
    return RSFIQACLI(RSFIQAModule, ShardDataModule, parser_class=RSFIQAParser,
                     parser_kwargs={**OMEGACONF, **{c: dict(OMEGACONF) for c in LIGHTNING_COMMANDS}},
                     save_config_kwargs={"overwrite": True}, seed_everything_default=SEED_DEFAULT,
                     auto_configure_optimizers=False, args=args)


def main(args: list[str] | None = None) -> Any:
    """The ``rsfiqa`` command (``args=None``: the command line), reached from the console script
    (:func:`rsfiqa.commands.main`) for a Lightning command or ``--help``.

    Called with ``args`` it returns the command's result (the LightningCLI of a Lightning command);
    from the command line only an int exit status, because the console script hands the return
    value to ``sys.exit`` (any other object would print it and exit with status 1).
    """
    result = run_command(args)
    return result if args is not None or isinstance(result, int) else None


def base_configs(path: Path) -> list[Path]:
    """The files a config's top-level ``config:`` key names (relative to it), base first, recursively."""
    if not path.is_file():
        return []
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigFileError(f"{path}: malformed YAML ({' '.join(str(err).split())}); fix the syntax "
                              f"(key: value, nested keys indented)") from err
    base = content.get("config") if isinstance(content, dict) else None
    return [] if not isinstance(base, str) else [*base_configs(path.parent / base), path.parent / base]


def with_base_configs(argv: list[str]) -> list[str]:
    """Every ``--config FILE`` preceded by ``--config BASE`` for the bases FILE names (``config: paper.yaml``)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg.partition("=")[2] if arg.startswith(
            "--config=") else None
        if path is not None:
            out += [x for base in base_configs(Path(path)) for x in ("--config", str(base))]
        out.append(arg)
    return out


def run_command(args: list[str] | None) -> Any:
    """Dispatch to an extra command or the LightningCLI; ``args=None`` reads ``sys.argv``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_COMMANDS:
        return extra_command(argv[0])(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        try:
            run_cli(["--help"] if args is not None or not argv else None)
        finally:
            print("\n" + extra_commands_help())
    given = argv
    argv, debug = pop_debug(argv)
    result: list[RSFIQACLI] = []

    def run() -> int:
        expanded = with_base_configs(argv)
        result.append(run_cli(None if args is None and expanded == given else expanded))
        return 0

    status = run_reporting(f"rsfiqa {argv[0]}", run, EXPECTED_ERRORS, EXIT_USER_ERROR, debug, ON_INTERRUPT)
    return result[0] if result else status


if __name__ == "__main__":
    sys.exit(main())
