"""Score any image end to end with a trained checkpoint: load -> segment (paper eq. 5) ->
describe -> the network (RSFIQANet: eqs. 1-10) -> a score on the training dataset's MOS scale.

What the checkpoint records and scoring uses
    ``hyper_parameters``  the network (``net``: backbone, L, text encoder ...; checkpoints of
                          earlier versions hold those keys at the top level); it is rebuilt with
                          ``pretrained=None`` and ``text_pretrained=FROM_CHECKPOINT``, so nothing is
                          downloaded: every weight comes from the checkpoint;
    ``rsfiqa_data``       (``ShardDataModule.state_dict``) input size, resize filter, text parts and
                          dimensions, and per training dataset its MOS range, direction and the
                          annotator settings (segmenter, describer, image handling) of its shards.

Same conditions as training and evaluation: the image is read with ``rsfiqa_core.imageio``, segmented
and described at the annotation resolution (``image.downscale_long_side`` of the annotator), the
label map brought back to the image's size, then image and label map go through the data
module's transforms and the region texts through ``contract.region_text`` with the checkpoint's
parts and dimensions.

Outputs. ``score_norm`` is the network's raw prediction on the normalised scale of eq. (11) (0 and
1 = the ends of the training dataset's MOS range, higher = better; not clipped, so it may leave
[0, 1] a little); ``score`` is the same number on the MOS scale of the first training dataset
(``contract.denormalise_mos``), named in ``scale_dataset``. Scores are deterministic for a fixed
batch size; other batch sizes change them by float rounding only (~1e-6). Regions are the shard
contract's region entries (index, valid, area, seg_score, content, levels, scores, missing_reason
...) whose ``text`` is the string the model read.

Annotators. ``annotate.api.Annotator.from_record`` rebuilds the segmenter and describer from the
configs the shards recorded (with the user's overrides) and annotates each batch; every
difference from the recorded configs is logged as a warning. Scoring pays only for what it uses:
the annotator is built and run only when the network reads regions or region texts (its config's
``consumes``) or the caller asks for regions (``regions=True``: the records' region entries, a
report's overlays, heatmaps). Otherwise the network gets the image alone (an empty label map, no
valid region, empty texts), each record's ``regions`` is ``None`` (not annotated) and annotator
overrides are refused (they would change nothing).

Speed and memory. With ``workers`` >= 1 (default: the CPU cores but one) CPU annotators run in
worker processes (:mod:`annotate.parallel`, same results as in-process): batch k+1 is decoded and
annotated while the network scores batch k. ``times`` (:class:`StageTimes`) accumulates the
seconds of each stage. Images are decoded with their long side bounded by ``max_side``
(:data:`DEFAULT_MAX_SIDE`; JPEGs at a reduced DCT scale), so a 100-MP photo costs about its
decoded size once, not the full-resolution annotation; images within the bound are scored
exactly as they are.
"""
from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageOps
from tqdm import tqdm

from annotate.api import Annotation, Annotator, AnnotatorSetupError, Monitor
from annotate.parallel import AnnotatorPool, PendingAnnotation, available_cores, parallel_safe
from rsfiqa.data import transforms
from rsfiqa.inference import pretrained
from rsfiqa.data.sample import model_input
from rsfiqa.model import registry
from rsfiqa.model.registry import ArchConfig, QualityNet
from rsfiqa.checkpoint import CheckpointError, read_checkpoint_file
from rsfiqa.model.text import FROM_CHECKPOINT
from rsfiqa_core import contract
from rsfiqa_core.device import resolve_device
from rsfiqa_core.imageio import DEFAULT_MAX_PIXELS, ImageError, load_rgb, printable, shrink, to_rgb8
from rsfiqa_core.timing import StageSeconds

log = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]
DEFAULT_BATCH_SIZE = 8
# Long side (px) at which images are annotated and fed to the network: bounds memory on huge photos
# (rsfiqa_core.imageio's ``downscale_to``); images within it are scored exactly as they are.
DEFAULT_MAX_SIDE = 2048
# Annotation processes beside the network (0: annotate in this process): all cores but the one the
# network's main process uses, at least 1 (measured on 2 cores: benchmarks/scoring.py).
DEFAULT_WORKERS = max(1, available_cores() - 1)
STAGES = ("decode", "segment", "describe", "prepare", "text", "network")


class ScoringSetupError(RuntimeError):
    """A checkpoint, annotator or option that scoring cannot use; the message says how to fix it."""


# --------------------------------------------------------------------------- checkpoint
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict (tensors and plain data only), checked for what scoring needs."""
    path = Path(path)
    try:
        ckpt = read_checkpoint_file(path)
    except CheckpointError as err:
        raise ScoringSetupError(str(err)) from err
    missing = [k for k in ("hyper_parameters", "state_dict", "rsfiqa_data") if k not in ckpt]
    if missing:
        raise ScoringSetupError(f"{path}: checkpoint lacks {missing}; scoring needs a checkpoint written by "
                                f"`rsfiqa fit` (with the ShardDataModule, which stores 'rsfiqa_data')")
    if not ckpt["rsfiqa_data"].get("train_datasets"):
        raise ScoringSetupError(f"{path}: checkpoint records no training dataset (rsfiqa_data.train_datasets)")
    return ckpt


def checkpoint_config(ckpt: Mapping[str, Any]) -> ArchConfig:
    """The network's config from the checkpoint's hyperparameters, set to take every weight from it."""
    return registry.config_from_hparams(ckpt["hyper_parameters"], pretrained=None, text_pretrained=FROM_CHECKPOINT)


def build_net(ckpt: Mapping[str, Any], device: torch.device, where: str = "checkpoint") -> QualityNet:
    """The network of the checkpoint's hyperparameters, every weight loaded from the checkpoint."""
    net = registry.build_net(checkpoint_config(ckpt))
    prefix = "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ScoringSetupError(f"{where}: its weights do not fit the network its hyperparameters describe "
                                f"(written by another version of rsfiqa?): {err}") from err
    return net.to(device).eval()


@dataclass(frozen=True)
class MosScale:
    """The MOS scale scores are reported on: the first training dataset's."""

    dataset: str
    mos_range: tuple[float, float]
    higher_better: bool
    train_datasets: tuple[str, ...]

    def to_mos(self, score_norm: float) -> float:
        return contract.denormalise_mos(score_norm, self.mos_range, self.higher_better)

    def describe(self) -> str:
        lo, hi = self.mos_range
        text = (f"scores on the MOS scale of '{self.dataset}' [{lo:g}, {hi:g}], "
                f"{'higher' if self.higher_better else 'lower'} = better")
        if len(self.train_datasets) > 1:
            text += f" (trained on {', '.join(self.train_datasets)}; the first one's scale is used)"
        return text


def mos_scale(data: Mapping[str, Any]) -> MosScale:
    """:class:`MosScale` of ``rsfiqa_data``'s first training dataset."""
    name = data["train_datasets"][0]
    meta = data["datasets"][name]
    return MosScale(name, tuple(float(x) for x in meta["mos_range"]), bool(meta["higher_better"]),
                    tuple(data["train_datasets"]))


def recorded_annotator(data: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The annotator settings of ``dataset``'s shards; a warning when other training sets differ."""
    annotator = dict(data["datasets"][dataset].get("annotator") or {})
    others = [n for n, m in data["datasets"].items()
              if n != dataset and {k: v for k, v in (m.get("annotator") or {}).items() if k != "versions"}
              != {k: v for k, v in annotator.items() if k != "versions"}]
    if others:
        log.warning("training datasets %s were annotated with other settings than %r; scoring uses %r's",
                    others, dataset, dataset)
    return annotator


# --------------------------------------------------------------------------- options
def parse_overrides(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["key=value", "a.b=1"]`` (values parsed as YAML) or a mapping -> a plain nested dict."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    bad = [s for s in items if "=" not in s or not s.split("=", 1)[0]]
    if bad:
        raise ScoringSetupError(f"overrides must look like KEY=VALUE, got {bad}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(items)), resolve=True)


def scoring_device(device: str | torch.device) -> torch.device:
    """:func:`rsfiqa_core.device.resolve_device`, its errors as :class:`ScoringSetupError`."""
    try:
        return resolve_device(device)
    except ValueError as err:
        raise ScoringSetupError(str(err)) from err


# --------------------------------------------------------------------------- inputs
def input_name(item: ImageInput, index: int) -> str:
    """How an input is named in records and error messages."""
    if isinstance(item, (str, os.PathLike)):
        return printable(str(item))  # undecodable bytes escaped, as annotation reports them
    return f"<{type(item).__name__} #{index}>"


def load_input(item: ImageInput, name: str, max_pixels: int | None, max_side: int | None = None) -> np.ndarray:
    """Upright HxWx3 uint8 RGB of a path, PIL image or uint8 array, its long side at most
    ``max_side`` (a path is decoded at reduced size where the format allows); :class:`ImageError` otherwise."""
    if isinstance(item, (str, os.PathLike)):
        return load_rgb(item, max_pixels=max_pixels, downscale_to=max_side)[0]
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise ImageError(f"{name}: expected a uint8 array HxW, HxWx3 or HxWx4, got {item.dtype} {item.shape}")
        item = Image.fromarray(item)
    if not isinstance(item, Image.Image):
        raise ImageError(f"{name}: not an image (expected a path, a PIL image or a uint8 numpy array)")
    rgb = np.asarray(shrink(to_rgb8(ImageOps.exif_transpose(item)), max_side), dtype=np.uint8)
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageError(f"{name}: image has no pixels")
    return rgb


@dataclass
class Scored:
    """One scored input: the plain ``record`` plus, on request, what a heatmap needs."""

    record: dict[str, Any]
    rgb: np.ndarray | None = None          # upright full-resolution image
    label_map: np.ndarray | None = None    # its region label map (values 0..L-1)
    attention: np.ndarray | None = None    # RSA attention of the requested token on the grid [Hn, Wn]


class StageTimes(StageSeconds, Monitor):
    """Seconds and images per scoring stage (:data:`STAGES`); the annotator reports ``segment`` and
    ``describe`` through the :class:`~annotate.api.Monitor` hooks (from its worker processes, if any:
    those seconds then overlap the others)."""

    def __init__(self) -> None:
        super().__init__(dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0))


@dataclass
class _Loaded:
    """A batch decoded, its annotation under way in the worker processes (``pending``) or not yet begun."""

    batch: list[tuple[int, ImageInput]]
    errors: dict[int, Scored]
    images: list[tuple[int, str, np.ndarray]]
    pending: PendingAnnotation | None


@dataclass
class _Annotated:
    index: int
    name: str
    rgb: np.ndarray
    annotation: Annotation | None  # None: not annotated (the network reads the image only)


# --------------------------------------------------------------------------- the scorer
class Scorer:
    """Segmenter + describer (when needed) + a trained network, ready to score images (see the
    module docstring); ``annotator`` None: images are not annotated."""

    def __init__(self, net: QualityNet, data: Mapping[str, Any], annotator: Annotator | None, device: torch.device,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_side: int | None = DEFAULT_MAX_SIDE,
                 workers: int = DEFAULT_WORKERS) -> None:
        self.net = net.eval()
        self.data = dict(data)
        self.annotator = annotator
        self.device = device
        self.scale = mos_scale(data)
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.workers = workers             # annotation processes; 0 = annotate in this process
        self.times = StageTimes()          # accumulated over every scoring call
        self.image_size = transforms.as_size(data["image_size"])
        self.card: dict[str, Any] = {}     # a shipped model's card (``from_model_file``); empty otherwise

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        segmenter_override: Mapping[str, Any] | Sequence[str] | None = None,
                        describer_override: Mapping[str, Any] | Sequence[str] | None = None,
                        regions: bool = False) -> "Scorer":
        """Model, annotators and settings as the checkpoint records them (module docstring).

        Overrides are mappings (``{"name": "classical"}``) or ``"key=value"`` strings merged into
        the recorded segmenter/describer configs. ``regions``: annotate even when the network does
        not read regions (the records' region entries, overlays). Raises :class:`ScoringSetupError`
        naming what is missing and the override that fixes it.
        """
        device = scoring_device(device)
        ckpt = read_checkpoint(path)
        return cls.assemble(checkpoint_config(ckpt), lambda: build_net(ckpt, device, str(path)), ckpt["rsfiqa_data"],
                            device, segmenter_override, describer_override, regions)

    @classmethod
    def from_pretrained(cls, name: str = pretrained.DEFAULT_MODEL, device: str | torch.device = "cpu",
                        segmenter_override: Mapping[str, Any] | Sequence[str] | None = None,
                        describer_override: Mapping[str, Any] | Sequence[str] | None = None,
                        regions: bool = False) -> "Scorer":
        """A registered shipped model (``rsfiqa models`` lists them): no training, no download;
        ``regions`` as in :meth:`from_checkpoint`."""
        return cls.from_model_file(pretrained.model_entry(name).path, device, segmenter_override,
                                   describer_override, name=name, regions=regions)

    @classmethod
    def from_model_file(cls, path: str | Path, device: str | torch.device = "cpu",
                        segmenter_override: Mapping[str, Any] | Sequence[str] | None = None,
                        describer_override: Mapping[str, Any] | Sequence[str] | None = None,
                        name: str | None = None, regions: bool = False) -> "Scorer":
        """A model file written by ``make model`` (:mod:`rsfiqa.inference.pretrained`)."""
        device = scoring_device(device)
        content = pretrained.read_model_file(path, name)
        where = f"model {name!r} ({path})" if name else str(path)
        scorer = cls.assemble(registry.config_from_hparams(content["hyper_parameters"]),
                              lambda: pretrained.build_net(content, device, where), content["rsfiqa_data"], device,
                              segmenter_override, describer_override, regions)
        scorer.card = dict(content["card"])
        return scorer

    @classmethod
    def assemble(cls, config: ArchConfig, net: Callable[[], QualityNet], data: Mapping[str, Any],
                 device: torch.device, segmenter_override: Mapping[str, Any] | Sequence[str] | None,
                 describer_override: Mapping[str, Any] | Sequence[str] | None, regions: bool = False) -> "Scorer":
        """The annotator recorded in ``data`` (with overrides) first, when the network of ``config``
        reads regions or texts or ``regions`` asks for them, then the network ``net()`` builds."""
        record = recorded_annotator(data, mos_scale(data).dataset)
        max_pixels = (record.get("image") or {}).get("max_pixels", DEFAULT_MAX_PIXELS)
        overrides = {"segmenter": parse_overrides(segmenter_override), "describer": parse_overrides(describer_override)}
        if config.consumes or regions:
            return cls(net(), data, cls.recorded_annotator(record, overrides, data, device), device, max_pixels)
        given = [f"--{kind}-override" for kind, values in overrides.items() if values]
        if given:
            raise ScoringSetupError(f"{' and '.join(given)} would change nothing: this model (arch {config.arch}) "
                                    f"reads the image only and scoring does not annotate; add --regions "
                                    f"(Python: regions=True) to annotate")
        return cls(net(), data, None, device, max_pixels)

    @staticmethod
    def recorded_annotator(record: Mapping[str, Any], overrides: Mapping[str, Any], data: Mapping[str, Any],
                           device: torch.device) -> Annotator:
        """The annotator of ``record`` with the user's overrides, checked against the model's L."""
        num_regions = int(data["num_regions"])
        try:
            annotator = Annotator.from_record(record, overrides, {"segmenter": {"num_regions": num_regions}}, device)
        except AnnotatorSetupError as err:
            raise ScoringSetupError(f"{err}\n  fix: --{err.kind}-override KEY=VALUE (Python: {err.kind}_override="
                                    f"{{'KEY': VALUE}})") from err
        if annotator.segmenter.num_regions != num_regions:
            raise ScoringSetupError(f"segmenter num_regions={annotator.segmenter.num_regions} but the model was "
                                    f"trained with L={num_regions} regions")
        return annotator

    @property
    def annotates(self) -> bool:
        """Whether images are segmented and described (records then carry their regions)."""
        return self.annotator is not None

    # ---------------------------------------------------------------- public API
    def score(self, images: Sequence[ImageInput], batch_size: int = DEFAULT_BATCH_SIZE,
              progress: bool = False) -> list[dict[str, Any]]:
        """One plain record per input, in order: ``{"image", "score", "score_norm", "scale_dataset",
        "regions", "error"}`` (``regions`` None when the scorer does not annotate); an input that cannot be
        read or annotated gets ``score: None`` and its reason in ``error`` instead of stopping the
        batch. A single input may be passed bare."""
        return [s.record for s in self.iter_scored(images, batch_size, progress)]

    def iter_scored(self, images: Sequence[ImageInput], batch_size: int = DEFAULT_BATCH_SIZE,
                    progress: bool = False, attn_token: tuple[int, int] | None = None,
                    keep_arrays: bool = False) -> Iterator[Scored]:
        """:class:`Scored` per input, in order, ``batch_size`` images at a time through segmenter,
        describer and model. ``attn_token`` = (row, col) of an RSA grid cell adds that token's
        attention map (heads averaged); ``keep_arrays`` keeps the image and label map."""
        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
            images = [images]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if attn_token is not None:
            check_token(attn_token, self.token_grid())
        batches = [list(enumerate(images[start:start + batch_size], start))
                   for start in range(0, len(images), batch_size)]
        with self.annotation_pool(len(images)) as pool, self.network_threads(pool), \
                tqdm(total=len(images), unit="img", desc="score", disable=not progress) as bar:
            previous = None
            for batch in batches:  # batch k is decoded and annotated while the network scores batch k-1
                current = self._load_batch(batch, pool)
                if previous is not None:
                    yield from self._score_loaded(previous, attn_token, keep_arrays)
                    bar.update(len(previous.batch))
                previous = current
            if previous is not None:
                yield from self._score_loaded(previous, attn_token, keep_arrays)
                bar.update(len(previous.batch))

    def annotation_pool(self, images: int) -> ContextManager[AnnotatorPool | None]:
        """``workers`` annotation processes (:mod:`annotate.parallel`), or ``None``: annotate in this
        process (``workers`` 0, a single image: nothing to overlap, or components that are not
        :func:`~annotate.parallel.parallel_safe`: SAM, the MLLM describers batch on their device)."""
        if self.annotator is None or self.workers < 1 or images < 2 or not parallel_safe(self.annotator):
            return nullcontext(None)
        return AnnotatorPool(self.annotator, self.workers)

    @torch.inference_mode()
    def token_grid(self) -> tuple[int, int]:
        """(Hn, Wn): the RSA token grid of this model's input size; an error without RSA."""
        if getattr(self.net, "rsa", None) is None:
            raise ScoringSetupError(f"attention maps need a model with RSA (this one is arch {self.net.config.arch}"
                                    f"{', use_rsa=False' if hasattr(self.net, 'rsa') else ''})")
        probe = torch.zeros(1, 3, *self.image_size, device=self.device)
        return tuple(self.net.backbone(probe)[-1].shape[-2:])

    @contextmanager
    def network_threads(self, pool: AnnotatorPool | None) -> Iterator[None]:
        """On the CPU, while annotation workers run beside it, the network's torch threads are limited to
        the cores the workers leave (torch's own threads would otherwise compete with them; measured
        in benchmarks/scoring.py); restored afterwards."""
        before = torch.get_num_threads()
        if pool is not None and self.device.type == "cpu":
            torch.set_num_threads(max(1, min(before, available_cores() - pool.workers)))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # ---------------------------------------------------------------- stages
    def _load_batch(self, batch: list[tuple[int, ImageInput]], pool: AnnotatorPool | None) -> _Loaded:
        """Decode a batch (errors kept per input) and, with worker processes, start annotating it."""
        errors: dict[int, Scored] = {}
        loaded = []
        with self.times.stage("decode", len(batch)):
            for index, item in batch:
                name = input_name(item, index)
                try:
                    loaded.append((index, name, load_input(item, name, self.max_pixels, self.max_side)))
                except ImageError as err:
                    errors[index] = Scored(self.error_record(name, str(err)))
        pending = pool.submit([rgb for _, _, rgb in loaded]) if pool is not None and loaded else None
        return _Loaded(batch, errors, loaded, pending)

    def _score_loaded(self, loaded: _Loaded, attn_token: tuple[int, int] | None, keep_arrays: bool) -> list[Scored]:
        """Annotate (or collect the workers' annotations of) a decoded batch, then score it."""
        results = dict(loaded.errors)
        rgbs = [rgb for _, _, rgb in loaded.images]
        if self.annotator is None:
            outcomes = [None] * len(rgbs)
        else:
            outcomes = (loaded.pending.result(self.times) if loaded.pending is not None
                        else self.annotator.annotate(rgbs, self.times))
        annotated = []
        for (index, name, rgb), outcome in zip(loaded.images, outcomes):
            if outcome is None or isinstance(outcome, Annotation):
                annotated.append(_Annotated(index, name, rgb, outcome))
            else:
                reason = f"{name}: annotation failed ({type(outcome.error).__name__}: {outcome.error})"
                results[index] = Scored(self.error_record(name, reason))
        if annotated:
            for item, scored in zip(annotated, self._predict(annotated, attn_token, keep_arrays)):
                results[item.index] = scored
        return [results[index] for index, _ in loaded.batch]

    def model_input(self, rgb: np.ndarray, label_map: np.ndarray,
                    regions: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """(image [3,H,W], label map [H,W], region_valid [L], texts) as evaluation reads them."""
        return model_input(rgb, label_map, regions, self.image_size, self.data["resize_interpolation"],
                           self.data["text_parts"], self.data["text_dims"])

    def image_only_input(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """:meth:`model_input` of an image that was not annotated: all background, no valid region, no text."""
        num_regions = self.net.num_regions
        image, labels, _, _ = self.model_input(rgb, np.full(rgb.shape[:2], num_regions - 1, dtype=np.int32), [])
        return image, labels, torch.zeros(num_regions, dtype=torch.bool), [""] * num_regions

    @torch.inference_mode()
    def _predict(self, items: list[_Annotated], attn_token: tuple[int, int] | None,
                 keep_arrays: bool) -> list[Scored]:
        with self.times.stage("prepare", len(items)):
            inputs = [self.image_only_input(item.rgb) if item.annotation is None
                      else self.model_input(item.rgb, item.annotation.label_map, item.annotation.regions)
                      for item in items]
            images, labels, valid = (torch.stack([x[i] for x in inputs]).to(self.device) for i in range(3))
            texts = [x[3] for x in inputs]
        if "text_encoder" in self.net.config.frozen_parts():  # encoded here once into its cache, looked up below
            with self.times.stage("text", len(items)):
                self.net.encode_region_texts(texts, valid)
        with self.times.stage("network", len(items)):
            out = self.net.forward_features(images, labels, valid, texts, return_attn=attn_token is not None)
            scores = out["score"].float().cpu().tolist()
        attention = None if attn_token is None else token_attention(out["rsa_attn"], out["grid"], attn_token)
        scored = []
        for i, (item, score_norm) in enumerate(zip(items, scores)):
            if not math.isfinite(score_norm):
                scored.append(Scored(self.error_record(item.name, non_finite_prediction(item.name, score_norm))))
                continue
            regions = (None if item.annotation is None
                       else [{**r, "text": t} for r, t in zip(item.annotation.regions, texts[i])])
            record = {"image": item.name, "score": self.scale.to_mos(score_norm), "score_norm": score_norm,
                      "scale_dataset": self.scale.dataset, "regions": regions, "error": None}
            scored.append(Scored(record, item.rgb if keep_arrays else None,
                                 item.annotation.label_map if keep_arrays and item.annotation is not None else None,
                                 None if attention is None else attention[i]))
        return scored

    def error_record(self, name: str, error: str) -> dict[str, Any]:
        return {"image": name, "score": None, "score_norm": None, "scale_dataset": self.scale.dataset,
                "regions": [] if self.annotates else None, "error": error}


def non_finite_prediction(name: str, score_norm: float) -> str:
    """The error of an image whose prediction is not a number: never written as a score."""
    return (f"{name}: the model predicted {score_norm} (not a finite number; its weights or this image's features "
            f"hold NaN/inf); no score written")


def check_token(token: tuple[int, int], grid: tuple[int, int]) -> None:
    """A clear error unless ``token`` = (row, col) is a cell of the ``grid`` = (Hn, Wn)."""
    row, col = token
    hn, wn = grid
    if not (0 <= row < hn and 0 <= col < wn):
        raise ScoringSetupError(f"attention token ({row}, {col}) is outside the model's {hn}x{wn} token grid "
                                f"(rows 0..{hn - 1}, columns 0..{wn - 1})")


def token_attention(rsa_attn: torch.Tensor, grid: tuple[int, int], token: tuple[int, int]) -> np.ndarray:
    """Eq. (9) attention weights [B,heads,N,N] -> the row of grid cell ``token`` = (row, col),
    averaged over heads, as [B, Hn, Wn] (where that token looks)."""
    row, col = token
    hn, wn = grid
    weights = rsa_attn[:, :, row * wn + col, :].float().mean(1)
    return weights.view(-1, hn, wn).cpu().numpy()
