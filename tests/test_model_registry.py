"""The architecture registry: every config builds its network, checkpoints and shipped files of the
layouts before the registry still load and score the same, and scoring annotates only what a model reads."""
from __future__ import annotations

import contextlib
import csv
import io
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from rsfiqa import cli
from rsfiqa.inference import pretrained, score_cli
from rsfiqa.inference.report import ANNOTATOR_VIEW_NOTE
from rsfiqa.inference.scorer import Scorer, ScoringSetupError
from rsfiqa.model import registry
from rsfiqa.model.net import NetConfig, RSFIQANet
from rsfiqa.model.stats import StatsConfig, StatsNet
from rsfiqa.model.text import FROM_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEMO_IMAGES = REPO / "demo" / "data" / "images"
# each config as it is used: alone, as an overlay on the base that scripts and docs put it on
STACKS = ([["resnet50.yaml"], ["swin.yaml"], ["cpu.yaml"], ["cpu.yaml", "demo.yaml"], ["cpu.yaml", "model.yaml"],
           ["cpu_regions.yaml"]]
          + [["cpu_regions.yaml", f"clive/{p.name}"] for p in sorted((CONFIGS / "clive").glob("*.yaml"))]
          + [["cpu_regions.yaml", f"ablations/{p.name}"] for p in sorted((CONFIGS / "ablations").glob("*.yaml"))])
NOT_ALONE = {"paper.yaml"}  # the base of swin.yaml and resnet50.yaml ("not used alone")
STATS = {"arch": "stats", "backbone": "test_efficientnet", "extra_backbones": ["resnet18"], "pretrained": None,
         "out_indices": [1, 2], "embed_dim": 8, "ensemble_members": 2, "num_regions": 5, "dropout": 0.3}
# the same model as RSFIQANet options before the registry (every NetConfig key of that version)
LEGACY_STATS = {**{k: v for k, v in STATS.items() if k != "arch"}, "global_stats": True, "freeze_backbone": True,
                "use_mhf": False, "use_text": False, "use_rsa": False, "num_heads": 4, "rsa_hard_mask": False,
                "rsa_norm": "none", "text_encoder": "clip", "text_model": "ViT-B-32", "text_pretrained": None,
                "freeze_text": True, "head_self_attn": True, "pool": "mean", "img_size": None}


def printed_config(stack: list[str]) -> dict:
    """``rsfiqa fit --config ... --print_config`` of a config stack, as a dict."""
    args = [a for name in stack for a in ("--config", str(CONFIGS / name))]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        mp.setattr(sys, "argv", ["rsfiqa"])
        cli.main(["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_every_config_file_is_in_a_stack() -> None:
    used = {name for stack in STACKS for name in stack} | NOT_ALONE
    files = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if p.parts[-2] != "annotate"}
    assert files == used


@pytest.mark.parametrize("stack", STACKS, ids=["+".join(s) for s in STACKS])
def test_every_config_parses_and_builds_its_network(stack: list[str]) -> None:
    config = printed_config(stack)
    net_options = config["model"]["net"]
    assert net_options["arch"] == ("stats" if stack[0] == "cpu.yaml" else "rsfiqa")
    arch_config = registry.config_from_hparams({"net": {**net_options, "num_regions": config["data"]["num_regions"]}},
                                               pretrained=None, text_pretrained=FROM_CHECKPOINT)
    net = registry.build_net(arch_config)
    assert isinstance(net, StatsNet if arch_config.arch == "stats" else RSFIQANet)
    assert net.config == arch_config


def test_cpu_yaml_is_the_statistics_model_it_was() -> None:
    net = printed_config(["cpu.yaml"])["model"]["net"]
    assert registry.as_config(net) == StatsConfig(
        backbone="efficientnet_lite0", extra_backbones=("efficientnet_lite2",), pretrained="pypi",
        out_indices=(0, 1, 2, 3, 4), ensemble_members=3, embed_dim=128, dropout=0.3)
    assert net["use_rsa"] is None and net["freeze_backbone"] is None  # options of the other architecture: unset


# --------------------------------------------------------------------------- layouts before the registry
@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_legacy_hyperparameters_map_to_the_same_configs(layout: str) -> None:
    paper = asdict(NetConfig(backbone="resnet18", use_text=False))
    old_paper = {**paper, "global_stats": False, "extra_backbones": (), "ensemble_members": 3}
    for old, expected in ((old_paper, NetConfig(**paper)), (LEGACY_STATS, registry.as_config(STATS))):
        hparams = {"net": old, "lr": 1e-3} if layout == "nested" else {**old, "lr": 1e-3}
        assert registry.config_from_hparams(hparams) == expected


def test_current_hyperparameters_round_trip_and_are_strict() -> None:
    config = registry.as_config(STATS)
    record = registry.config_record(config)
    assert record["arch"] == "stats" and registry.config_from_hparams({"net": record}) == config
    with pytest.raises(ValueError, match="use_rsa is not an option of arch 'stats'"):
        registry.config_from_hparams({"net": {**record, "use_rsa": True}})


def test_the_shipped_file_records_the_old_layout_and_maps_to_the_statistics_model() -> None:
    content = pretrained.read_model_file(pretrained.model_entry(pretrained.DEFAULT_MODEL).path)
    assert "arch" not in content["hyper_parameters"]["net"]  # written before the registry, loaded unchanged
    config = registry.config_from_hparams(content["hyper_parameters"])
    assert isinstance(config, StatsConfig) and config.backbone_names == ("efficientnet_lite0", "efficientnet_lite2")
    assert config.frozen_parts() == sorted(content["frozen"])


def test_resuming_a_legacy_checkpoint_with_the_same_network_finds_no_difference() -> None:
    options = registry.NetOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in STATS.items()})
    assert cli.network_differences(options, {"net": LEGACY_STATS}) == {}
    changed = registry.NetOptions(**{**asdict(options), "ensemble_members": 4})
    assert cli.network_differences(changed, {"net": LEGACY_STATS}) == {"ensemble_members": (4, 2)}
    assert cli.checkpoint_model_options({**LEGACY_STATS, "lr": 0.5})["net"]["arch"] == "stats"


@pytest.fixture(scope="module")
def stats_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One trained statistics model saved as checkpoints in three layouts: current, old nested, old flat."""
    folder = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    net = registry.build_net(STATS).eval()
    x = net.image_statistics(torch.randn(10, 3, 64, 64))
    net.fit_closed_form(x, torch.rand(10), x[:5], torch.rand(5))
    shipped = pretrained.read_model_file(pretrained.model_entry(pretrained.DEFAULT_MODEL).path)
    data = {**shipped["rsfiqa_data"], "image_size": [64, 64]}
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    layouts = {"current": {"net": registry.config_record(net.config)}, "nested": {"net": LEGACY_STATS},
               "flat": LEGACY_STATS}
    paths = {}
    for name, hparams in layouts.items():
        paths[name] = folder / f"{name}.ckpt"
        torch.save({"hyper_parameters": {**hparams, "lr": 1e-3}, "state_dict": state, "rsfiqa_data": data},
                   paths[name])
    return paths


def test_statistics_checkpoints_of_every_layout_score_the_same_without_annotating(stats_checkpoints) -> None:
    images = sorted(DEMO_IMAGES.iterdir())[:2]
    results = {}
    for name, path in stats_checkpoints.items():
        scorer = Scorer.from_checkpoint(path)
        assert not scorer.annotates and scorer.annotator is None
        results[name] = scorer.score(images)
        assert scorer.times.images["segment"] == scorer.times.images["describe"] == 0
    assert all(r["error"] is None and r["regions"] is None for r in results["current"])
    assert results["nested"] == results["flat"] == results["current"]


def test_regions_on_request_annotate_and_leave_the_score_unchanged(stats_checkpoints) -> None:
    image = sorted(DEMO_IMAGES.iterdir())[0]
    plain = Scorer.from_checkpoint(stats_checkpoints["current"]).score([image])[0]
    with_regions = Scorer.from_checkpoint(stats_checkpoints["current"], regions=True)
    assert with_regions.annotates
    record = with_regions.score([image])[0]
    assert len(record["regions"]) == 5 and with_regions.times.images["segment"] == 1
    assert record["score_norm"] == plain["score_norm"]


def test_annotator_overrides_without_annotation_are_refused(stats_checkpoints) -> None:
    with pytest.raises(ScoringSetupError, match="--segmenter-override would change nothing.*--regions"):
        Scorer.from_checkpoint(stats_checkpoints["current"], segmenter_override=["name=classical"])


def test_a_model_that_reads_regions_is_always_annotated() -> None:
    config = NetConfig(backbone="resnet18", use_text=False)
    assert config.consumes == {"regions"}
    assert NetConfig(use_rsa=False).consumes == {"texts"}
    assert NetConfig(use_rsa=False, use_text=False).consumes == frozenset()


# --------------------------------------------------------------------------- rsfiqa score
def test_score_csv_has_regions_only_when_asked(stats_checkpoints, tmp_path: Path, capsys) -> None:
    image = str(sorted(DEMO_IMAGES.iterdir())[0])
    for flags, has_regions in (([], False), (["--regions"], True)):
        out = tmp_path / f"s{len(flags)}.csv"
        assert score_cli.main([image, "--ckpt", str(stats_checkpoints["current"]), "--out", str(out),
                               "--no-progress", "--device", "cpu", *flags]) == 0
        rows = list(csv.DictReader(open(out, newline="")))
        assert len(rows) == 1 and ("regions" in rows[0]) == has_regions
        if has_regions:
            assert len(yaml.safe_load(rows[0]["regions"])) == 5


def test_report_of_a_model_that_ignores_regions_labels_its_overlays(stats_checkpoints, tmp_path: Path) -> None:
    image = str(sorted(DEMO_IMAGES.iterdir())[0])
    report = tmp_path / "r.html"
    assert score_cli.main([image, "--ckpt", str(stats_checkpoints["current"]), "--out", str(tmp_path / "s.csv"),
                           "--report", str(report), "--no-progress", "--device", "cpu"]) == 0
    page = report.read_text()
    assert "region quality overlay" in page and ANNOTATOR_VIEW_NOTE.replace("'", "&#x27;") in page


def test_report_of_a_model_that_reads_regions_has_no_such_label() -> None:
    scorer = Scorer.__new__(Scorer)
    scorer.net = RSFIQANet(NetConfig(backbone="resnet18", use_text=False, out_indices=(3, 4), embed_dim=8,
                                     num_heads=2))
    assert score_cli.overlay_note(scorer) == ""
    scorer.net = registry.build_net(STATS)
    assert score_cli.overlay_note(scorer) == ANNOTATOR_VIEW_NOTE
