"""The statistics path of the offline configuration: level statistics, the ridge + MLP ensemble head,
its closed-form fit inside ``rsfiqa fit``, caching and shipping with two backbones."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsfiqa import cli
from rsfiqa.inference import pretrained
from rsfiqa.model.backbone import Backbone
from rsfiqa.model.feature_cache import FeatureCache
from rsfiqa.model import registry
from rsfiqa.model.stats import RIDGE_ALPHAS, EnsembleHead, StatisticsBackbone, StatsNet, map_statistics
from rsfiqa.module import RSFIQAModule

STATS = {"arch": "stats", "backbone": "test_efficientnet", "extra_backbones": ("resnet18",), "pretrained": None,
         "out_indices": (1, 2), "embed_dim": 16, "ensemble_members": 2, "num_regions": 3}


def linear_problem(n: int, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g) * torch.linspace(0.5, 3.0, dim) + 4.0
    y = x @ torch.linspace(-1.0, 1.0, dim) + 0.05 * torch.randn(n, generator=g)
    return x, y


def test_map_statistics_are_channel_mean_and_population_std() -> None:
    level = torch.randn(2, 3, 4, 5)
    flat = level.flatten(2)
    expected = torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], dim=-1)
    torch.testing.assert_close(map_statistics(level), expected)


def test_ridge_fit_matches_the_normal_equations_and_sets_the_buffers() -> None:
    x, y = linear_problem(40)
    vx, vy = linear_problem(15, seed=1)
    head = EnsembleHead(6, members=2, hidden=8)
    fit = head.fit_closed_form(x, y, vx, vy)
    assert fit["alpha"] in [float(a) for a in RIDGE_ALPHAS] and fit["val_srcc"] > 0.95
    xc = (x - x.mean(0)).double().numpy()
    penalty = fit["alpha"] * np.mean(np.linalg.svd(xc, compute_uv=False) ** 2)
    expected = np.linalg.solve(xc.T @ xc + penalty * np.eye(6), xc.T @ (y.double().numpy() - y.double().mean().item()))
    np.testing.assert_allclose(head.ridge_weight.numpy(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.feature_mean, x.mean(0))
    torch.testing.assert_close(head.feature_std, x.std(0, unbiased=False))
    assert float(head.target_mean) == pytest.approx(float(y.mean()))
    torch.testing.assert_close(head.ridge_score(vx), (vx - x.mean(0)) @ head.ridge_weight + y.mean())


def test_the_penalty_is_chosen_by_validation_srcc() -> None:
    x, y = linear_problem(8, dim=6)
    vx, vy = linear_problem(30, seed=1)
    head = EnsembleHead(6)
    chosen = head.fit_closed_form(x, y, vx, vy)
    srccs = []
    for alpha in RIDGE_ALPHAS:  # the same search by hand: the chosen penalty has the best validation SRCC
        xc = (x - x.mean(0)).double()
        scale = torch.linalg.svdvals(xc).square().mean()
        w = torch.linalg.solve(xc.T @ xc + alpha * scale * torch.eye(6, dtype=torch.float64), xc.T @ (y - y.mean()).double())
        srccs.append(torch.corrcoef(torch.stack([((vx.double() - x.mean(0)) @ w).argsort().argsort().double(),
                                                 vy.double().argsort().argsort().double()]))[0, 1].item())
    assert chosen["val_srcc"] == pytest.approx(max(srccs), abs=1e-6)


def test_score_is_the_mean_of_ridge_and_members_and_an_unfitted_head_refuses() -> None:
    head = EnsembleHead(6, members=3, hidden=8).eval()
    x, y = linear_problem(20)
    with pytest.raises(RuntimeError, match="never fitted"):
        head(x)
    head.fit_closed_form(x, y, x[:10], y[:10])
    out = head(x)
    assert out["members"].shape == (20, 3)
    torch.testing.assert_close(out["score"], (head.ridge_score(x) + out["members"].mean(-1)) / 2)


@pytest.mark.parametrize("change, message", [
    ({"use_rsa": True}, "use_rsa is not an option of arch 'stats'"),
    ({"freeze_backbone": False, "pool": "mean"}, "freeze_backbone, pool are not options of arch 'stats'"),
    ({"arch": "rsfiqa"}, "ensemble_members, extra_backbones are not options of arch 'rsfiqa'"),
    ({"arch": "statz"}, "not a registered architecture"),
])
def test_options_of_another_architecture_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry.as_config({**STATS, **change})


def test_the_statistics_model_reads_the_image_only_and_has_a_closed_form_step() -> None:
    config = registry.as_config(STATS)
    assert config.consumes == frozenset() and config.closed_form
    assert config.frozen_parts() == ["backbone", "extra_backbones"]
    assert config.backbone_names == ("test_efficientnet", "resnet18")


def test_net_concatenates_every_backbones_statistics() -> None:
    net = registry.build_net(STATS).eval()
    assert isinstance(net, StatsNet)
    images = torch.randn(2, 3, 64, 64)
    stats = net.image_statistics(images)
    widths = [2 * sum(b.channels) for b in (net.backbone, *net.extra_backbones)]
    assert stats.shape == (2, sum(widths)) and len(net.extra_backbones) == 1
    first = torch.cat(net.backbone(images), dim=-1)
    torch.testing.assert_close(stats[:, :widths[0]], first)


def test_statistics_have_their_own_cache_namespace(tmp_path: Path) -> None:
    torch.manual_seed(0)
    maps_backbone = Backbone("test_efficientnet", None, (1, 2), freeze=True)
    torch.manual_seed(0)
    stats_backbone = StatisticsBackbone("test_efficientnet", None, (1, 2), freeze=True)
    cache = FeatureCache(tmp_path, stats_backbone).attach()
    assert cache.root != FeatureCache(tmp_path, maps_backbone).root  # same weights, other outputs
    images = torch.randn(2, 3, 48, 48)
    first = stats_backbone(images)
    assert [t.shape for t in first] == [(2, 2 * c) for c in stats_backbone.channels]
    again = stats_backbone(images)
    assert cache.misses == 2 and cache.hits == 2
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)


def test_shipped_file_of_a_two_backbone_model_rebuilds_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = registry.build_net(STATS).eval()
    x = net.image_statistics(torch.randn(12, 3, 48, 48))
    net.head.fit_closed_form(x, torch.rand(12), x[:6], torch.rand(6))
    data = {"train_datasets": ["x"], "datasets": {"x": {"mos_range": [0, 1], "higher_better": True}}}
    content = pretrained.package_model(net.state_dict(), {"net": STATS}, data, {"name": "two"})
    assert set(content["frozen"]) == {"backbone", "extra_backbones"}
    assert not any(k.split(".")[0] in ("backbone", "extra_backbones") for k in content["trained"])
    assert "head.fitted" in content["trained"]
    torch.manual_seed(0)  # the frozen random backbones are rebuilt identically, as weight packages would be
    rebuilt = pretrained.build_net(content, torch.device("cpu"), "two.pt")
    images = torch.randn(2, 3, 48, 48)
    inputs = (images, torch.zeros(2, 48, 48, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), [["", "", ""]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(*inputs), net(*inputs))


@pytest.mark.slow
def test_fit_solves_the_ridge_before_training_and_the_checkpoint_keeps_it(tmp_path, synth_shards, monkeypatch,
                                                                          capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rsfiqa"])
    args = ["--data.train_shards", str(synth_shards), "--data.image_size", "64", "--data.batch_size", "4",
            "--data.hflip", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.feature_cache", str(tmp_path / "cache"), "--model.feature_cache_dtype", "float32"]
    for key, value in STATS.items():
        if key == "num_regions":  # linked from data.num_regions
            continue
        args += [f"--model.net.{key}", "null" if value is None else str(list(value) if isinstance(value, tuple)
                                                                          else value)]
    torch.set_num_threads(1)
    fit = cli.main(["fit", *args, "--trainer.max_epochs", "2", "--model.lr", "1e-3"])
    out = capsys.readouterr().out
    assert "ensemble head: ridge on" in out
    head = fit.model.net.head
    assert bool(head.fitted) and head.ridge_weight.abs().sum() > 0
    ckpt = next((tmp_path / "runs" / "rsfiqa" / "version_0" / "checkpoints").glob("last.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(state["net.head.ridge_weight"], head.ridge_weight)
    # every image went through each backbone once: the second pass (training, validation) hit the cache
    assert fit.model.feature_cache.hits > 0 and all(c.hits > 0 for c in fit.model.extra_feature_caches)
    tested = cli.main(["test", *args, "--ckpt_path", str(ckpt), "--trainer.logger", "false"])
    srcc = float(tested.trainer.callback_metrics["test/srcc"])
    assert np.isfinite(srcc)
    # the same checkpoint as written before the registry (RSFIQANet options with global_stats) tests the same
    legacy = torch.load(ckpt, map_location="cpu", weights_only=False)
    options = {k: v for k, v in legacy["hyper_parameters"]["net"].items() if k != "arch"}
    legacy["hyper_parameters"]["net"] = {**options, "global_stats": True, "freeze_backbone": True, "use_mhf": False,
                                         "use_text": False, "use_rsa": False, "rsa_norm": "none"}
    torch.save(legacy, tmp_path / "legacy.ckpt")
    again = cli.main(["test", *args, "--ckpt_path", str(tmp_path / "legacy.ckpt"), "--trainer.logger", "false"])
    assert float(again.trainer.callback_metrics["test/srcc"]) == srcc


def test_each_member_is_trained_on_its_own_error() -> None:
    """Eq. (11) per member (independent members), not on the ensemble's mean prediction."""
    module = RSFIQAModule(net=STATS)
    images = torch.randn(4, 3, 48, 48)
    x = module.net.image_statistics(images)
    module.net.head.fit_closed_form(x, torch.rand(4), x, torch.rand(4))
    batch = {"image": images, "label_map": torch.zeros(4, 48, 48, dtype=torch.long),
             "region_valid": torch.ones(4, 3, dtype=torch.bool), "texts": [["", "", ""]] * 4,
             "mos_norm": torch.tensor([0.1, 0.4, 0.6, 0.9])}
    module.eval()  # no dropout: the loss is compared with a recomputation
    loss = module.training_step(batch, 0)
    members = module.net.head.member_scores(x)
    expected = ((members - batch["mos_norm"][:, None]) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, ((members.mean(-1) - batch["mos_norm"]) ** 2).mean())
