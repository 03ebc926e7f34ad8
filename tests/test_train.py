"""End to end through the ``rsfiqa`` CLI: fit, test (within and cross-dataset), predict, configs, help."""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch

from rsfiqa import cli
from rsfiqa_core import contract

REPO = Path(__file__).resolve().parents[1]


def common_args(shards: Path, tiny_model_args: list[str]) -> list[str]:
    return ["--data.train_shards", str(shards), "--data.image_size", "64", "--data.batch_size", "4",
            *tiny_model_args, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def command_line(monkeypatch, tmp_path):
    """The CLI is driven through ``main(args)`` (pytest's own arguments are not the command line),
    in a scratch working directory so that run directories never land in the repository."""
    monkeypatch.setattr(sys, "argv", ["rsfiqa"])
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_shards, tiny_model_args):
    """One short ``rsfiqa fit`` run (2 epochs) in a fresh working directory; (run dir, args)."""
    workdir = tmp_path_factory.mktemp("run")
    args = common_args(synth_shards, tiny_model_args)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["rsfiqa"])
        torch.set_num_threads(1)
        cli.main(["fit", *args, "--trainer.max_epochs", "2", "--model.lr", "1e-3"])
    return workdir / "runs" / "rsfiqa" / "version_0", args


@pytest.mark.slow
def test_fit_writes_one_run_dir_with_checkpoints_metrics_and_data_settings(trained):
    run_dir, _ = trained
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    best = list((run_dir / "checkpoints").glob("epoch*.ckpt"))
    assert len(best) == 1 and "srcc" in best[0].name
    assert list(run_dir.glob("events.out.tfevents*")), "TensorBoard and CSV loggers share the run dir"
    with open(run_dir / "metrics.csv") as f:
        header = next(csv.reader(f))
    for name in ("train/loss", "train/srcc", "val/loss", "val/plcc", "val/srcc", "val/krcc", "val/rmse"):
        assert name in header
    assert (run_dir / "config.yaml").is_file()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    data = ckpt["rsfiqa_data"]
    assert data["datasets"]["synth"]["mos_range"] == [1.0, 5.0] and data["datasets"]["synth"]["higher_better"]
    assert data["datasets"]["synth"]["annotator"]["segmenter"] == {"name": "synthetic"}
    assert data["image_size"] == [64, 64] and data["num_regions"] == 5
    assert data["text_parts"] == ["content", "level", "score"]
    assert ckpt["hyper_parameters"]["net"]["num_regions"] == 5


@pytest.mark.slow
def test_test_reports_plcc_and_srcc(trained, capsys):
    run_dir, args = trained
    result = cli.main(["test", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                       "--trainer.logger", "false"])
    out = capsys.readouterr().out
    assert "PLCC" in out and "SRCC" in out
    metrics = result.trainer.callback_metrics
    for name in ("test/plcc", "test/srcc", "test/krcc", "test/rmse", "test/loss"):
        assert math.isfinite(float(metrics[name])), name
    assert float(metrics["test/rmse"]) ** 2 == pytest.approx(float(metrics["test/loss"]), rel=1e-4)


@pytest.mark.slow
def test_cross_dataset_test_keeps_one_metric_set_per_dataset(trained, other_shards, synth_shards, capsys):
    run_dir, args = trained
    result = cli.main(["test", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                       "--trainer.logger", "false", "--data.test_shards", f"[{synth_shards}, {other_shards}]"])
    out = capsys.readouterr().out
    metrics = result.trainer.callback_metrics
    for dataset in ("synth", "other"):
        assert f"test/{dataset}/srcc" in metrics and f"test/{dataset}/plcc" in metrics
        assert any(line.startswith(dataset) for line in out.splitlines()), out  # per-dataset table row
    assert float(metrics["test/synth/srcc"]) != float(metrics["test/other/srcc"])


@pytest.mark.slow
def test_predict_writes_one_row_per_image_into_the_run_dir(trained, other_shards, monkeypatch):
    run_dir, args = trained
    monkeypatch.chdir(run_dir.parents[2])  # the fit run's working directory: runs/rsfiqa/version_0
    cli.main(["predict", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
              "--data.test_shards", f"[{other_shards}]"])
    predict_dirs = [d for d in run_dir.parent.iterdir() if (d / "predictions.csv").is_file()]
    assert len(predict_dirs) == 1 and predict_dirs[0] != run_dir, "predict gets a run dir of its own"
    with open(predict_dirs[0] / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and len({r["key"] for r in rows}) == 10
    for row in rows:
        assert row["dataset"] == "other" and row["image"].startswith("img_")
        # the "other" scale is 0..100 with lower = better
        assert float(row["pred_mos"]) == pytest.approx(contract.denormalise_mos(float(row["pred_norm"]),
                                                                                (0.0, 100.0), False))
        assert 0.0 <= float(row["mos"]) <= 100.0


@pytest.mark.slow
def test_evaluating_a_checkpoint_does_not_load_backbone_weights_first(trained, tmp_path):
    """Checkpoint hyperparameters name the training run's weight source (here a file that is gone);
    evaluation must not need it: the trained weights come from the checkpoint."""
    run_dir, args = trained
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["net"]["pretrained"] = str(tmp_path / "deleted-imagenet-weights.pth")
    moved = tmp_path / "moved.ckpt"
    torch.save(ckpt, moved)
    result = cli.main(["validate", *args, "--ckpt_path", str(moved), "--trainer.logger", "false"])
    assert result.model.net.config.pretrained is None
    assert math.isfinite(float(result.trainer.callback_metrics["val/srcc"]))


@pytest.mark.parametrize("config", ["cpu.yaml", "cpu_regions.yaml", "swin.yaml", "resnet50.yaml"])
def test_print_config_resolves_interpolations(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(REPO / "configs" / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "${" not in out, "omegaconf interpolations must be resolved"
    assert "num_regions: 5" in out and "monitor: val/srcc" in out


def test_help_lists_lightning_and_extra_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", *cli.EXTRA_COMMANDS):
        assert f"    {command} " in out, command


def test_extra_commands_dispatch_lazily_and_fail_clearly(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "echo", (f"{__name__}:record_args", "test command"))
    monkeypatch.setattr(f"{__name__}.record_args", seen.append, raising=False)
    cli.main(["echo", "a", "--b"])
    assert seen == [["a", "--b"]]
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "absent", ("rsfiqa.no_such_module:main", "not written yet"))
    with pytest.raises(SystemExit, match="rsfiqa absent: .*rsfiqa.no_such_module"):
        cli.main(["absent", "x"])
