"""``rsfiqa ablate``: the paper's ablation studies (Tables 3-6) as runs of config overlays, collected
into one table.

    rsfiqa ablate --base configs/swin.yaml --configs configs/ablations/table3_*.yaml \\
        configs/ablations/full.yaml --shards shards/live shards/koniq [--splits auto] \\
        [--out runs/ablations] [--name table3] [any rsfiqa fit/test option]

Each overlay runs on top of ``--base`` through the split protocol (:mod:`rsfiqa.experiments.splits`) on
every ``--shards`` directory, into ``<out>/<overlay stem>/<dataset>/``, so runs are resumable and a
config shared by several tables (``full.yaml``) is trained once when the tables share ``--out``.
A ``--shards`` path may contain ``{num_regions}``, filled from the configs' ``data.num_regions``
(command-line overrides do not count; Table 6: ``shards/koniq_L{num_regions}``, one annotation per L).

Output in ``--out``: ``<name>.csv`` (one row per config and dataset: mean and sample std (ddof = 1)
of PLCC, SRCC, KRCC, RMSE over the splits) and ``<name>.md`` (one row per config, one column per
dataset, cells ``PLCC/SRCC`` as ``0.900±0.013/0.897±0.010``). ``<name>`` defaults to ``ablation``.
"""
from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from rsfiqa.data.datamodule import ShardDataModule
from rsfiqa.eval import report
from rsfiqa.experiments import splits
from rsfiqa.module import METRIC_NAMES
from rsfiqa_core.contract import ContractError

ABLATION_COLUMNS = ("config", "description", *report.SUMMARY_COLUMNS)


def config_description(path: str | Path) -> str:
    """The first comment line of a config file (what the overlay ablates), without the ``#``."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def load_with_base(path: Path) -> Any:
    """A config file over the file its ``config:`` key names (relative to it), as ``rsfiqa`` reads it."""
    cfg = OmegaConf.load(path)
    base = cfg.pop("config", None)
    return cfg if base is None else OmegaConf.merge(load_with_base(path.parent / base), cfg)


def shard_dir(template: str, configs: Sequence[str]) -> str:
    """``template`` with ``{num_regions}`` filled from the last of ``configs`` that sets ``data.num_regions``
    (else the data module's default)."""
    if "{" not in template:
        return template
    merged = OmegaConf.merge(*(load_with_base(Path(c)) for c in configs))
    num_regions = OmegaConf.select(merged, "data.num_regions",
                                   default=inspect.signature(ShardDataModule).parameters["num_regions"].default)
    try:
        return template.format(num_regions=num_regions)
    except (KeyError, IndexError) as err:
        raise splits.SplitError(f"--shards {template}: only {{num_regions}} can be filled in ({err})") from err


def run_ablation(base: str, configs: Sequence[str], shards: Sequence[str], split_spec: str, out: Path,
                 overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every config on every dataset through the split protocol; one summary row per (config, dataset)."""
    rows: list[dict[str, Any]] = []
    for config in configs:
        stack = [base, config]
        for template in shards:
            directory = shard_dir(template, stack)
            dataset = splits.dataset_name(directory)
            if any(r["config"] == Path(config).stem and r["dataset"] == dataset for r in rows):
                raise splits.SplitError(f"config {Path(config).stem} meets dataset {dataset!r} twice "
                                        f"(repeated --configs name or two --shards of one dataset)")
            print(f"rsfiqa ablate: {Path(config).stem} on {dataset} ({directory})")
            split_rows = splits.run_splits(stack, directory, splits.resolve_splits(split_spec, directory),
                                           out / Path(config).stem / dataset, overrides)
            rows += [{"config": Path(config).stem, "description": config_description(config), **summary}
                     for summary in report.summarize(split_rows)]
    return rows


def ablation_markdown(rows: Sequence[dict[str, Any]], title: str) -> str:
    """One row per config, one ``PLCC/SRCC`` (mean±std) column per dataset, in first-seen order."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    cells: dict[str, dict[str, str]] = {}
    descriptions: dict[str, str] = {}
    for r in rows:
        cells.setdefault(r["config"], {})[r["dataset"]] = report.plcc_srcc(r)
        descriptions[r["config"]] = r["description"]
    table = report.markdown_table(
        ["config", "description", *datasets],
        [[config, descriptions[config], *(row.get(d, "") for d in datasets)] for config, row in cells.items()])
    return (f"# {title}\n\n{table}\n\nCells: PLCC/SRCC, mean±std over the splits; {report.STD_NOTE}. The CSV has "
            f"the number of splits and every metric ({', '.join(METRIC_NAMES)}) with its std.\n")


def write_ablation(out: Path, name: str, rows: Sequence[dict[str, Any]], title: str) -> tuple[Path, Path]:
    return (report.write_csv(out / f"{name}.csv", rows, ABLATION_COLUMNS),
            report.write_text_atomic(out / f"{name}.md", ablation_markdown(rows, title)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsfiqa ablate", allow_abbrev=False,
                                description="Run ablation config overlays through the split protocol and collect "
                                            "one table. Options not listed here are passed to rsfiqa fit/test.")
    p.add_argument("--base", required=True, help="base rsfiqa config, e.g. configs/swin.yaml")
    p.add_argument("--configs", nargs="+", required=True, help="overlay configs, one table row each")
    p.add_argument("--shards", nargs="+", required=True,
                   help="annotated shard directories, one table column each; may contain {num_regions}")
    p.add_argument("--splits", default="auto", help="auto | official | comma list of split tags, per dataset")
    p.add_argument("--out", default="runs/ablations", help="output folder (default runs/ablations)")
    p.add_argument("--name", default="ablation", help="file name of the table: <name>.md and <name>.csv")
    return p


def main(argv: Sequence[str]) -> list[dict[str, Any]]:
    """Entry point of ``rsfiqa ablate``."""
    args, overrides = build_parser().parse_known_args(list(argv))
    out = Path(args.out).resolve()
    try:
        rows = run_ablation(args.base, args.configs, args.shards, args.splits, out, overrides)
    except (splits.SplitError, ContractError, report.ReportError) as err:
        raise SystemExit(f"rsfiqa ablate: error: {err}") from err
    csv_path, md_path = write_ablation(out, args.name, rows, f"{args.name}: {Path(args.base).stem} + overlays")
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return rows
