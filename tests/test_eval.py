"""Evaluation protocols: cross-dataset ``rsfiqa test`` reports, split protocol, ablations, determinism.

One tiny model (random-init test EfficientNet + MiniLM, 64 px) is trained for one epoch per split on
synthetic shards with three split tags; the first split's checkpoint also serves the test-command
tests.
"""
from __future__ import annotations

import csv
import io
import json
import re
import statistics
import sys
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from rsfiqa import cli
from rsfiqa.eval import report
from rsfiqa.experiments import ablate, rsa_probe, splits
from rsfiqa.eval.callbacks import TestReport, unique_names
from conftest import TINY_MODEL
from shardgen import write_shards

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = sorted((REPO / "configs" / "ablations").glob("*.yaml"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CELL = r"-?\d\.\d{3}/-?\d\.\d{3}"
CELL_PM = r"-?\d\.\d{3}±\d\.\d{3}/-?\d\.\d{3}±\d\.\d{3}"


def tiny_config(tiny_model: dict) -> dict:
    return {"seed_everything": 0,
            "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "log_every_n_steps": 1,
                        "enable_progress_bar": False, "enable_model_summary": False},
            "model": {"net": dict(tiny_model), "lr": 1e-3},
            "data": {"image_size": 64, "batch_size": 4}}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    """A working directory, the tiny config file and a 20-sample dataset with split tags seed0..seed2
    in a folder named ``synth_L5`` (for the ``{num_regions}`` placeholder of ``rsfiqa ablate``)."""
    root = tmp_path_factory.mktemp("eval")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(TINY_MODEL)))
    shards = write_shards(root / "synth_L5", 20, image_size=(64, 64), split_tags=("seed0", "seed1", "seed2"))
    torch.set_num_threads(1)
    return SimpleNamespace(root=root, config=str(config), shards=str(shards))


@pytest.fixture(autouse=True)
def command_line(monkeypatch, setup):
    monkeypatch.setattr(sys, "argv", ["rsfiqa"])
    monkeypatch.chdir(setup.root)


@pytest.fixture(scope="module")
def first_split(setup) -> Path:
    """``rsfiqa splits`` on split seed0 only; its output folder."""
    out = setup.root / "splits"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(setup.root)
        mp.setattr(sys, "argv", ["rsfiqa"])
        cli.main(["splits", "--config", setup.config, "--shards", setup.shards, "--splits", "seed0", "--out", str(out)])
    return out


def best_ckpt(split_dir: Path) -> str:
    return json.loads((split_dir / splits.FIT_DONE).read_text())["best_ckpt"]


# --------------------------------------------------------------------------- rsfiqa test
@pytest.mark.slow
def test_cross_dataset_test_reports_each_dataset_separately(setup, first_split, other_shards, tmp_path, capsys):
    run = cli.main(["test", "--config", setup.config, "--ckpt_path", best_ckpt(first_split / "seed0"),
                    "--data.test_shards", f"[{setup.shards}, {other_shards}]", "--test_report.out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = read_csv(tmp_path / "results.csv")
    assert [r["dataset"] for r in rows] == ["synth", "other"]
    assert [int(r["n"]) for r in rows] == [20, 10], "cross-dataset: every sample of each test set"
    assert list(rows[0]) == ["dataset", "n", "plcc", "srcc", "krcc", "rmse"]
    metrics = run.trainer.callback_metrics
    for row in rows:
        for m in ("plcc", "srcc", "krcc", "rmse"):  # the module's own per-dataset numbers, never pooled
            assert float(row[m]) == pytest.approx(float(metrics[f"test/{row['dataset']}/{m}"]), abs=1e-6)
        assert any(line.startswith(row["dataset"]) for line in out.splitlines())
    assert rows[0]["srcc"] != rows[1]["srcc"]
    markdown = (tmp_path / "results.md").read_text()
    assert "| model | synth | other |" in markdown and len(re.findall(CELL, markdown)) == 4
    for name, n in (("synth", 20), ("other", 10)):
        predictions = read_csv(tmp_path / f"predictions_{name}.csv")
        assert len(predictions) == n and {p["dataset"] for p in predictions} == {name}
        assert (tmp_path / f"scatter_{name}.png").read_bytes()[:8] == PNG_MAGIC
    # "other" is a 0..100 scale with lower = better: predictions are reported on that scale
    assert all(0.0 <= float(p["pred_mos"]) <= 100.0 for p in read_csv(tmp_path / "predictions_other.csv"))


@pytest.mark.slow
def test_testing_twice_gives_identical_numbers_on_one_device(setup, first_split, other_shards, tmp_path, capsys):
    args = ["test", "--config", setup.config, "--ckpt_path", best_ckpt(first_split / "seed0"),
            "--data.test_shards", f"[{other_shards}]", "--trainer.logger", "false"]
    cli.main([*args, "--test_report.out_dir", str(tmp_path / "a")])
    cli.main([*args, "--test_report.out_dir", str(tmp_path / "b"), "--trainer.devices", "2"])
    assert "testing on one device" in capsys.readouterr().out
    for name in ("results.csv", "predictions_other.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_test_report_refuses_several_processes(tmp_path):
    trainer = SimpleNamespace(world_size=2, log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="one device"):
        TestReport().setup(trainer, None, "test")


@pytest.mark.parametrize("devices,count", [(1, 1), ("1", 1), ([3], 1), ("0,", 1), ("0,1", 2), (2, 2),
                                           ("auto", None), (-1, None)])
def test_device_count(devices, count):
    assert cli.device_count(devices) == count


def test_unique_names_are_file_safe():
    assert unique_names(["live", "live", "a/b", "live"]) == ["live", "live-2", "a_b", "live-3"]


# --------------------------------------------------------------------------- fit: curves
@pytest.mark.slow
def test_fit_writes_training_curves(first_split):
    curves = first_split / "seed0" / "logs" / "version_0" / "curves.png"
    assert curves.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- split protocol
@pytest.mark.slow
def test_split_protocol_skips_finished_splits_and_resumes_a_crashed_one(setup, first_split, capsys):
    seed0_results = first_split / "seed0" / "results.csv"
    before = seed0_results.stat().st_mtime_ns
    args = ["splits", "--config", setup.config, "--shards", setup.shards, "--splits", "seed0,seed1,seed2",
            "--out", str(first_split)]
    cli.main(args)
    assert "split seed0: already done" in capsys.readouterr().out
    assert seed0_results.stat().st_mtime_ns == before

    rows = read_csv(first_split / "splits.csv")
    assert [r["split"] for r in rows] == ["seed0", "seed1", "seed2", "mean", "std"]
    per_split = {m: [float(r[m]) for r in rows[:3]] for m in ("plcc", "srcc", "krcc", "rmse")}
    for m, values in per_split.items():
        assert float(rows[3][m]) == pytest.approx(statistics.mean(values))
        assert float(rows[4][m]) == pytest.approx(statistics.stdev(values))  # ddof = 1
    assert len(set(per_split["plcc"])) == 3, "each split tests other images"
    summary = (first_split / "summary.md").read_text()
    assert re.search(CELL_PM, summary) and "ddof = 1" in summary

    # a split that stopped after its last checkpoint (no fit_done.json, no results) resumes from it
    seed2 = first_split / "seed2"
    (seed2 / splits.FIT_DONE).unlink()
    (seed2 / "results.csv").unlink()
    cli.main(args)
    out = capsys.readouterr().out
    assert f"split seed2: resuming training from {seed2 / 'checkpoints' / 'last.ckpt'}" in out
    assert "split seed1: already done" in out
    assert read_csv(first_split / "splits.csv")[2] == rows[2]


def test_splits_auto_prefers_official_then_seed_tags_in_numeric_order(tmp_path):
    official = write_shards(tmp_path / "k", 6, split_tags=("official", "seed0"), image_size=(32, 32))
    seeds = write_shards(tmp_path / "s", 6, split_tags=("seed10", "seed2", "seed0"), image_size=(32, 32))
    assert splits.resolve_splits("auto", str(official)) == ["official"]
    assert splits.resolve_splits("auto", str(seeds)) == ["seed0", "seed2", "seed10"]
    assert splits.resolve_splits("seed2, seed0", str(seeds)) == ["seed2", "seed0"]
    with pytest.raises(splits.SplitError, match=r"\['seed5'\].*share"):
        splits.resolve_splits("seed0,seed5", str(seeds))
    with pytest.raises(SystemExit, match="rsfiqa splits: error: .*official"):
        cli.main(["splits", "--config", "x.yaml", "--shards", str(seeds), "--splits", "official"])


# --------------------------------------------------------------------------- ablations
@pytest.mark.slow
def test_ablate_runs_each_config_over_the_splits_into_one_table(setup, tmp_path):
    no_text = tmp_path / "no_text.yaml"
    no_text.write_text("# without region text\nmodel:\n  net:\n    use_text: false\n")
    answer = tmp_path / "answer.yaml"
    answer.write_text("# every description is Answer.\ndata:\n  text_parts: []\n")
    template = setup.shards.replace("synth_L5", "synth_L{num_regions}")
    cli.main(["ablate", "--base", setup.config, "--configs", str(no_text), str(answer), "--shards", template,
              "--splits", "seed0,seed1", "--out", str(tmp_path / "out")])
    rows = read_csv(tmp_path / "out" / "ablation.csv")
    assert [(r["config"], r["dataset"], r["splits"]) for r in rows] == [("no_text", "synth", "2"),
                                                                        ("answer", "synth", "2")]
    assert rows[0]["description"] == "without region text"
    assert rows[0]["plcc"] != rows[1]["plcc"], "two configs, two models"
    for r in rows:
        assert float(r["srcc_std"]) >= 0.0
    markdown = (tmp_path / "out" / "ablation.md").read_text()
    assert len(re.findall(rf"^\| (no_text|answer) \| .* \| {CELL_PM} \|$", markdown, flags=re.M)) == 2
    assert (tmp_path / "out" / "answer" / "synth" / "seed1" / "results.csv").is_file()


def test_shard_template_takes_num_regions_from_the_configs(tmp_path):
    base, overlay = tmp_path / "base.yaml", tmp_path / "o.yaml"
    base.write_text("data:\n  num_regions: 4\n")
    overlay.write_text("model:\n  net:\n    use_rsa: false\n")
    assert ablate.shard_dir("shards/koniq_L{num_regions}", [str(base), str(overlay)]) == "shards/koniq_L4"
    assert ablate.shard_dir("shards/koniq_L{num_regions}", [str(overlay)]) == "shards/koniq_L5"  # the default
    with pytest.raises(splits.SplitError, match="only {num_regions}"):
        ablate.shard_dir("shards/{dataset}", [str(overlay)])


@pytest.mark.parametrize("overlay", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_shipped_ablation_overlays_only_set_keys_of_the_paper_config(overlay):
    def keys(tree: dict, prefix: str = "") -> set[str]:
        return {k for key, v in tree.items()
                for k in (keys(v, f"{prefix}{key}.") if isinstance(v, dict) else {f"{prefix}{key}"})}
    unknown = keys(yaml.safe_load(overlay.read_text())) - keys(yaml.safe_load((REPO / "configs" / "paper.yaml").read_text()))
    assert not unknown, f"{overlay.name}: keys the paper config does not have: {unknown}"
    assert ablate.config_description(overlay).startswith(("Table", "Full RSFIQA"))


@pytest.mark.parametrize("name,expected", [("table6_L3", {"num_regions": 3}), ("table4_1_none", {"text_parts": []}),
                                           ("table5_5_no_overall", {"text_dims": ["color", "noise", "artifact", "blur"]})])
def test_ablation_overlays_reach_the_resolved_config(name, expected):
    buf = io.StringIO()
    overlay = REPO / "configs" / "ablations" / f"{name}.yaml"
    with redirect_stdout(buf), pytest.raises(SystemExit):
        cli.main(["fit", "--config", str(REPO / "configs" / "swin.yaml"), "--config", str(overlay), "--print_config"])
    resolved = yaml.safe_load(buf.getvalue())
    assert {k: resolved["data"][k] for k in expected} == expected


# --------------------------------------------------------------------------- report helpers
def test_summary_uses_sample_std_and_the_papers_format():
    rows = [{"dataset": "live", "n": 10, "plcc": p, "srcc": s, "krcc": 0.8, "rmse": 0.1}
            for p, s in ((0.90, 0.89), (0.92, 0.90), (0.91, 0.905))]
    (summary,) = report.summarize(rows)
    assert summary["splits"] == 3 and summary["plcc"] == pytest.approx(0.91)
    assert summary["plcc_std"] == pytest.approx(0.01)  # ddof = 1 (population std would be 0.00816)
    assert report.plcc_srcc(summary) == "0.910±0.010/0.898±0.008"
    assert report.plcc_srcc(rows[0]) == "0.900/0.890"
    assert report.summarize(rows[:1])[0]["plcc_std"] != report.summarize(rows[:1])[0]["plcc_std"]  # NaN


def test_read_results_names_a_bad_file(tmp_path):
    bad = tmp_path / "results.csv"
    bad.write_text("dataset,n\nlive,3\n")
    with pytest.raises(report.ReportError, match=r"results.csv: not a results file"):
        report.read_results(bad)


# --------------------------------------------------------------------------- rsfiqa probe
@pytest.mark.slow
def test_probe_reproduces_the_split_test_score_and_reports_the_bias(first_split, capsys):
    result = cli.main(["probe", str(first_split / "seed0")])
    (row,) = read_csv(first_split / "seed0" / "results.csv")
    assert result["full"]["srcc"] == pytest.approx(float(row["srcc"]), abs=1e-4)
    assert result["full"]["plcc"] == pytest.approx(float(row["plcc"]), abs=1e-4)
    assert result["images"] == int(row["n"])
    assert result["lambda"] > 0 and result["logits_std"] > 0 and 0 <= result["attention_tv"] <= 1
    out = capsys.readouterr().out
    assert all(variant in out for variant in rsa_probe.VARIANTS)


def test_probe_refuses_a_folder_without_a_finished_fit(tmp_path):
    with pytest.raises(SystemExit, match="fit_done.json"):
        cli.main(["probe", str(tmp_path)])


def test_probe_variants_restore_the_model_and_rotate_descriptions():
    from rsfiqa.model.rsa import RegionSemanticAttention
    rsa = RegionSemanticAttention(8, 4, 2)
    rsa.log_lambda.data.fill_(0.3)
    with rsa_probe.bias_removed(rsa):
        assert rsa.lam == 0
    assert rsa.log_lambda.item() == pytest.approx(0.3)
    assert rsa_probe.rotated([["a", "b"], ["c", "d"], ["e", "f"]]) == [["c", "d"], ["e", "f"], ["a", "b"]]
