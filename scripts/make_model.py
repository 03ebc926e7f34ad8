"""Rebuild the shipped model (``make model``): clive-dev minus the demo photos -> annotate -> fit ->
the small file under ``rsfiqa/weights/`` -> its accuracy on the 48 demo photos it never saw.

    python scripts/make_model.py [--clive ../shared/data/clive-dev] [--work runs/model] [--name clive-offline]
                                 [--out FILE] [--max-epochs N]

Steps (each through the project's own entry points; a rerun resumes the annotation and reuses the
feature cache):

1. a dataset folder ``WORK/data`` (``labels.csv`` + ``images/`` linked to clive-dev) holding every
   clive-dev photo except the 48 of ``demo/data``, matched by their original CLIVE file name;
2. ``python -m annotate --dataset csv`` with the offline annotator, split 90/10 train/val (seed 0);
3. ``rsfiqa fit --config configs/cpu.yaml --config configs/model.yaml`` (seed 0), then
   ``rsfiqa validate`` of the checkpoint with the best validation SRCC;
4. the trained parts into the registered file (``rsfiqa.inference.pretrained``), with the recipe,
   the validation metrics, the metrics on the demo photos and reference predictions for tests.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from annotate.cli import main as annotate_main  # noqa: E402
from annotate.datasets.csv_folder import write_subset  # noqa: E402
from rsfiqa.cli import main as rsfiqa_main  # noqa: E402
from rsfiqa.inference import pretrained  # noqa: E402
from rsfiqa.inference.report import correlations  # noqa: E402
from rsfiqa.inference.scorer import Scorer  # noqa: E402
from rsfiqa_core.usererrors import SettingError, check_output_folder  # noqa: E402

ANNOTATE_OVERRIDES = ("dataset.mos_range=[0,100]", "dataset.test_frac=0", "dataset.val_frac=0.1",
                      "dataset.dataset_name=clive")
DEMO = REPO / "demo" / "data"
REFERENCE_PHOTOS = 4


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def training_folder(clive: Path, folder: Path) -> int:
    """``folder/labels.csv`` and ``folder/images/`` (symbolic links) of clive-dev minus the demo photos."""
    demo = {row["original_name"] for row in read_rows(DEMO / "labels.csv")}
    return len(write_subset(clive, folder, lambda i, row: row["original_name"] not in demo))


def fit(work: Path, args: Sequence[str]) -> Path:
    """``rsfiqa fit`` with the recipe; the checkpoint with the best validation SRCC."""
    cli = rsfiqa_main(["fit", *args, "--trainer.default_root_dir", str(work / "runs"),
                       "--trainer.logger", logger_value(work / "runs")])
    best = cli.trainer.checkpoint_callback.best_model_path
    if not best:
        raise SystemExit("make model: no checkpoint was saved")
    return Path(best)


def logger_value(runs: Path) -> str:
    """The CSV and TensorBoard loggers writing under ``runs``, as a LightningCLI value."""
    return json.dumps([{"class_path": f"lightning.pytorch.loggers.{cls}",
                        "init_args": {"save_dir": str(runs), "name": "model"}} for cls in ("CSVLogger", "TensorBoardLogger")])


def validate(checkpoint: Path, args: Sequence[str]) -> dict[str, float]:
    """PLCC/SRCC/KRCC/RMSE of the checkpoint on the validation photos (``rsfiqa validate``)."""
    cli = rsfiqa_main(["validate", *args, "--ckpt_path", str(checkpoint), "--trainer.logger", "false"])
    metrics = cli.trainer.callback_metrics
    return {name: float(metrics[f"val/{name}"]) for name in ("plcc", "srcc", "krcc", "rmse")}


def demo_accuracy(model_file: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(PLCC/SRCC on the 48 demo photos, reference normalised scores of the first few) of a model file."""
    rows = read_rows(DEMO / "labels.csv")
    scorer = Scorer.from_model_file(model_file, "cpu")
    records = scorer.score([DEMO / "images" / row["image"] for row in rows], progress=True)
    failed = [r["error"] for r in records if r["error"]]
    if failed:
        raise SystemExit(f"make model: demo photos could not be scored: {failed}")
    metrics = correlations([float(row["mos"]) for row in rows], [r["score"] for r in records])
    reference = {row["image"]: r["score_norm"] for row, r in zip(rows[:REFERENCE_PHOTOS], records)}
    return {**metrics, "n": len(rows)}, reference


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clive", type=Path, default=REPO.parent / "shared" / "data" / "clive-dev")
    parser.add_argument("--work", type=Path, default=Path("runs/model"), help="working folder (default %(default)s)")
    parser.add_argument("--name", default=pretrained.DEFAULT_MODEL, choices=sorted(pretrained.MODELS))
    parser.add_argument("--out", type=Path, default=None, help="write the file here instead of the registered path")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the recipe's epochs (smoke tests)")
    args = parser.parse_args(argv)
    if not (args.clive / "labels.csv").is_file():
        parser.error(f"{args.clive / 'labels.csv'} not found: point --clive at the clive-dev folder")
    target = args.out or pretrained.MODELS[args.name].path
    for option, folder in (("--out", target.parent), ("--work", args.work)):  # before hours of work
        try:
            check_output_folder(option, folder)
        except SettingError as err:
            print(f"make model: error: {err}", file=sys.stderr)
            return 1
    seconds, start = {}, time.perf_counter()
    photos = training_folder(args.clive, args.work / "data")
    print(f"make model: {photos} clive-dev photos (the {len(read_rows(DEMO / 'labels.csv'))} demo photos left out)")
    status = annotate_main(["--dataset", "csv", "--root", str(args.work / "data"), "--out", str(args.work / "shards"),
                            *ANNOTATE_OVERRIDES])
    if status != 0:
        return status
    seconds["annotate"] = time.perf_counter() - start
    configs = pretrained.MODELS[args.name].configs
    run_args = [a for config in configs for a in ("--config", str(REPO / config))]
    run_args += ["--data.train_shards", str(args.work / "shards"), "--model.feature_cache", str(args.work / "cache")]
    if args.max_epochs is not None:
        run_args += ["--trainer.max_epochs", str(args.max_epochs), "--model.t_max", str(args.max_epochs)]
    best = fit(args.work, run_args)
    seconds["fit"] = time.perf_counter() - start - seconds["annotate"]
    val = validate(best, run_args)
    card = {"name": args.name, "created": time.strftime("%Y-%m-%d"), "checkpoint": best.name,
            "training_data": {"source": "clive-dev (LIVE In the Wild Challenge) minus the 48 demo photos",
                              "photos": photos, "split": "90/10 train/val by image, seed 0"},
            "recipe": {"configs": list(configs), "max_epochs_override": args.max_epochs,
                       "annotate": "configs/annotate/offline.yaml",
                       "annotate_overrides": list(ANNOTATE_OVERRIDES), "seed": 0},
            "validation": val}
    staged = target.with_name(f"{target.stem}.staged.pt")
    pretrained.save_model_file(pretrained.package_checkpoint(torch.load(best, map_location="cpu", weights_only=True),
                                                             card), staged)
    card["demo"], card["reference"] = demo_accuracy(staged)
    content = pretrained.read_model_file(staged)
    content["card"] = card
    pretrained.save_model_file(content, target)
    staged.unlink()
    seconds["total"] = time.perf_counter() - start
    print(f"\nmake model: wrote {target} ({target.stat().st_size / 1e6:.2f} MB) in {seconds['total']:.0f} s "
          f"(annotate {seconds['annotate']:.0f} s, fit {seconds['fit']:.0f} s)")
    print(f"  validation ({round(photos * 0.1)} photos): " + "  ".join(f"{k.upper()} {v:.3f}" for k, v in val.items()))
    print(f"  demo photos (never trained on, n={card['demo']['n']}): PLCC {card['demo']['plcc']:.3f}  "
          f"SRCC {card['demo']['srcc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
