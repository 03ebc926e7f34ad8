"""``rsfiqa splits``: the intra-dataset protocol (paper "Datasets"; Table 1) — train and test one
dataset on each of its splits, report mean ± std.

    rsfiqa splits --config configs/swin.yaml --shards shards/live [--splits auto] [--out DIR] \\
        [--config configs/ablations/x.yaml ...] [any rsfiqa fit/test option, e.g. --trainer.max_epochs 50]

Splits: ``auto`` (default) = ``official`` when every record has that split tag (KonIQ-10k), else
every ``seedK`` tag the records share (the 10 random splits); or an explicit comma list
(``seed0,seed1``). Each split runs ``rsfiqa fit`` (early stopping and checkpoint selection on the
split's ``val`` samples) and then ``rsfiqa test`` with the best checkpoint on the split's ``test``
samples, in this process, through the same LightningCLI as the command line. Options after the
configs apply to both; the protocol's own keys (``data.train_shards``, ``data.split_tag``,
``data.test_shards``, loggers, checkpoint folder, report folder) are set last, from the file
``<out>/<split>/protocol.yaml``.

Layout of ``--out`` (default ``runs/splits/<config stem>-<dataset>``)::

    <split>/protocol.yaml   the protocol's overrides for this split
    <split>/logs/version_N  CSV + TensorBoard logs and curves.png of each fit attempt
    <split>/checkpoints     last.ckpt and the best checkpoint (val SRCC)
    <split>/fit_done.json   written when fit finished: the best checkpoint
    <split>/results.csv     written when test finished (plus results.md, predictions, scatter plot)
    splits.csv              one row per split, then a ``mean`` and a ``std`` row per dataset
    summary.md              mean±std per metric, PLCC/SRCC as ``0.900±0.013/0.897±0.010``

Resumable: a split whose ``results.csv`` exists is skipped (with a message); one that stopped
during training resumes from its ``last.ckpt`` (Lightning restores weights, optimiser, epoch and
callbacks); one that stopped after training only reruns the test. Resumption trusts the folder:
other settings need another ``--out``. std is the sample standard deviation (ddof = 1).
"""
from __future__ import annotations

import argparse
import gc
import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from rsfiqa import cli
from rsfiqa.data.shards import load_shard_set
from rsfiqa.eval import report
from rsfiqa.module import METRIC_NAMES
from rsfiqa_core.contract import ContractError

OFFICIAL = "official"
SEED_TAG = re.compile(r"seed(\d+)$")
FIT_DONE = "fit_done.json"
SPLIT_COLUMNS = ("split", *report.RESULT_COLUMNS)


class SplitError(ValueError):
    """A split specification or run that cannot be carried out."""


# --------------------------------------------------------------------------- which splits
def shared_split_tags(shards: str) -> set[str]:
    """Split tags present in every record of the shard directory."""
    tags: set[str] | None = None
    for _, info in load_shard_set(shards).samples():
        tags = set(info.splits) if tags is None else tags & set(info.splits)
    return tags or set()


def resolve_splits(spec: str, shards: str) -> list[str]:
    """Split tags to run: ``auto``, or a comma list checked against the records of ``shards``."""
    tags = shared_split_tags(shards)
    seeds = sorted((t for t in tags if SEED_TAG.match(t)), key=lambda t: int(SEED_TAG.match(t).group(1)))
    if spec == "auto":
        chosen = [OFFICIAL] if OFFICIAL in tags else seeds
    else:
        chosen = [t.strip() for t in spec.split(",") if t.strip()]
    missing = [t for t in chosen if t not in tags]
    if not chosen or missing:
        raise SplitError(f"{shards}: split tags {missing or chosen} are not in every record; "
                         f"the records share {sorted(tags)}")
    return chosen


# --------------------------------------------------------------------------- one split
def protocol_overlay(shards: str, split: str, split_dir: Path) -> dict[str, Any]:
    """The config keys the protocol owns for one split (applied after every other option)."""
    loggers = [{"class_path": f"lightning.pytorch.loggers.{cls}",
                "init_args": {"save_dir": str(split_dir), "name": "logs"}} for cls in ("CSVLogger", "TensorBoardLogger")]
    return {"data": {"train_shards": str(Path(shards).resolve()), "split_tag": split, "test_shards": None},
            "trainer": {"default_root_dir": str(split_dir), "logger": loggers},
            "checkpoint": {"dirpath": str(split_dir / "checkpoints")},
            "last_checkpoint": {"dirpath": str(split_dir / "checkpoints")},
            "test_report": {"out_dir": str(split_dir)}}


def run_split(configs: Sequence[str], shards: str, split: str, split_dir: Path,
              overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Fit (or resume) and test one split; its ``results.csv`` rows. Skips what is already done."""
    results = split_dir / report.RESULTS_CSV
    if results.is_file():
        print(f"split {split}: already done ({results}), skipping")
        return report.read_results(results)
    split_dir.mkdir(parents=True, exist_ok=True)
    overlay = split_dir / "protocol.yaml"
    OmegaConf.save(OmegaConf.create(protocol_overlay(shards, split, split_dir)), overlay)
    args = [arg for c in configs for arg in ("--config", str(c))] + list(overrides) + ["--config", str(overlay)]
    best = best_checkpoint(split, split_dir, args)
    print(f"split {split}: testing {best}")
    cli.main(["test", *args, "--trainer.logger", "false", "--ckpt_path", best])
    free_memory()
    return report.read_results(results)


def best_checkpoint(split: str, split_dir: Path, args: list[str]) -> str:
    """Train the split (resuming from ``last.ckpt`` when a run stopped) unless done; the best checkpoint."""
    done = split_dir / FIT_DONE
    if done.is_file():
        print(f"split {split}: training already done ({done})")
        return json.loads(done.read_text())["best_ckpt"]
    last = split_dir / "checkpoints" / "last.ckpt"
    resume = ["--ckpt_path", str(last)] if last.is_file() else []
    print(f"split {split}: " + (f"resuming training from {last}" if resume else "training"))
    run = cli.main(["fit", *args, *resume])
    best = run.trainer.checkpoint_callback.best_model_path if run.trainer.checkpoint_callback else ""
    del run
    free_memory()
    if not best:
        raise SplitError(f"split {split}: training saved no best checkpoint in {split_dir / 'checkpoints'} "
                         f"(was validation or checkpointing switched off?)")
    report.write_text_atomic(done, json.dumps({"best_ckpt": best}))
    return best


def free_memory() -> None:
    """Collect a finished run's model and data before the next run (all runs share this process)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- all splits
def run_splits(configs: Sequence[str], shards: str, splits: Sequence[str], out: Path,
               overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every split in turn; writes ``splits.csv`` and ``summary.md`` into ``out``; the per-split rows."""
    out = Path(out).resolve()
    rows = []
    for split in splits:
        rows += [{"split": split, **row} for row in run_split(configs, shards, split, out / split, overrides)]
    write_split_reports(out, rows, f"{', '.join(Path(c).stem for c in configs)} on {shards}")
    return rows


def write_split_reports(out: Path, rows: list[dict[str, Any]], title: str) -> list[dict[str, Any]]:
    """``splits.csv`` (per-split rows, then ``mean`` and ``std`` rows) and ``summary.md``; the summary."""
    summary = report.summarize(rows)
    aggregate = [{"split": kind, "dataset": s["dataset"], "n": "",
                  **{m: s[m + suffix] for m in METRIC_NAMES}}
                 for s in summary for kind, suffix in (("mean", ""), ("std", "_std"))]
    report.write_csv(out / "splits.csv", rows + aggregate, SPLIT_COLUMNS)
    text = report.summary_markdown(summary, f"{title}: mean ± std over {len(rows)} splits")
    report.write_text_atomic(out / "summary.md", text)
    print(text)
    return summary


def dataset_name(shards: str) -> str:
    return str(load_shard_set(shards).index["dataset"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsfiqa splits", allow_abbrev=False,
                                description="Train and test every split of a dataset; report mean ± std. Options "
                                            "not listed here are passed to rsfiqa fit/test.")
    p.add_argument("--config", action="append", required=True,
                   help="rsfiqa config (repeatable: later files override earlier ones)")
    p.add_argument("--shards", required=True, help="annotated shard directory of the dataset")
    p.add_argument("--splits", default="auto", help="auto | official | comma list of split tags (seed0,seed1,...)")
    p.add_argument("--out", default=None, help="output folder (default runs/splits/<config>-<dataset>)")
    return p


def main(argv: Sequence[str]) -> list[dict[str, Any]]:
    """Entry point of ``rsfiqa splits``."""
    args, overrides = build_parser().parse_known_args(list(argv))
    try:
        splits = resolve_splits(args.splits, args.shards)
        out = Path(args.out or f"runs/splits/{Path(args.config[0]).stem}-{dataset_name(args.shards)}")
        print(f"rsfiqa splits: {len(splits)} split(s) of {args.shards} -> {out}")
        return run_splits(args.config, args.shards, splits, out, overrides)
    except (SplitError, ContractError, report.ReportError) as err:
        raise SystemExit(f"rsfiqa splits: error: {err}") from err
