"""The shard contract: the one interface between ``annotate/`` (writer) and ``rsfiqa/`` (reader).

A shard directory holds webdataset ``.tar`` files plus ``index.json``. Each sample has

* ``<ext>`` (``jpg``, ``png``, ``bmp``, ``webp`` ...): the original image bytes, unchanged;
* ``regions.png``: a single-channel uint8 label map at the resolution of the UPRIGHT image (EXIF
  orientation applied, as :func:`rsfiqa_core.imageio.decode_rgb` returns it), values 0..L-1;
* ``json``: the record described by :func:`make_record` (keys may be added, never renamed). Its
  ``checksums`` (added by :func:`encode_sample`) hold the SHA-256 of the sample's other members
  (image bytes and label map) and, under ``json``, of the record itself without its ``checksums``
  (:func:`record_bytes`: canonical JSON, so the digest survives its own presence);
  :func:`decode_sample` verifies them, so bytes changed on disk (a MOS digit included) are named
  (shard and key) instead of being trained on. Records written before ``checksums`` (or before the
  ``json`` digest) existed load with what they have verified.

Region ``L-1`` is the background (pixels no kept mask covers, paper eq. 5); regions that are
empty are flagged ``valid: false`` and never fabricated. Everything that reads or writes these
fields goes through this module.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from rsfiqa_core.usererrors import naming_the_file

CONTRACT_VERSION = 1
DIMENSIONS: tuple[str, ...] = ("color", "noise", "artifact", "blur", "overall")
LEVELS: tuple[str, ...] = ("bad", "poor", "fair", "good", "excellent")  # scores 1..5
LEVEL_SCORE: dict[str, int] = {w: i + 1 for i, w in enumerate(LEVELS)}
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif")
LABEL_MAP_KEY = "regions.png"
JSON_KEY = "json"
INDEX_NAME = "index.json"
CHECKSUMS_KEY = "checksums"
SPLIT_VALUES = ("train", "val", "test")
CLIP_CONTEXT_LENGTH = 77
PLACEHOLDER_TEXT = "Answer."  # the description when no prompt part is selected (paper, Table 4 first row)


# --------------------------------------------------------------------------- keys and scores
def sample_key(dataset: str, image_name: str) -> str:
    """Stable webdataset ``__key__`` from dataset + image name.

    webdataset splits a file name at its first dot, so keys contain no dots; a short hash of
    the exact name keeps keys unique when two names differ only in characters we replace.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", image_name)[-60:].strip("_") or "img"
    digest = hashlib.sha1(f"{dataset.lower()}/{image_name}".encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{dataset.lower()}_{stem}_{digest}"


def normalise_mos(mos: float, mos_range: Sequence[float], higher_better: bool) -> float:
    """MOS mapped to [0, 1] with higher = better (paper eq. 11's target)."""
    lo, hi = float(mos_range[0]), float(mos_range[1])
    if not hi > lo:
        raise ValueError(f"mos_range must be increasing, got {mos_range}")
    t = (float(mos) - lo) / (hi - lo)
    return t if higher_better else 1.0 - t


def denormalise_mos(t: float, mos_range: Sequence[float], higher_better: bool) -> float:
    """Inverse of :func:`normalise_mos`: a [0,1] score back on the dataset's own scale."""
    lo, hi = float(mos_range[0]), float(mos_range[1])
    t = t if higher_better else 1.0 - t
    return lo + t * (hi - lo)


# --------------------------------------------------------------------------- region text
def region_text(
    region: Mapping[str, Any],
    parts: Sequence[str] = ("content", "level", "score"),
    dims: Sequence[str] = DIMENSIONS,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int = CLIP_CONTEXT_LENGTH,
) -> str:
    """The description string of one region fed to the text encoder (paper, "Prompt Format").

    ``parts`` picks content / level / score (Table 4), ``dims`` the distortion dimensions
    (Table 5). The ratings are never cut; only the content phrase is shortened, word by word,
    until ``count_tokens`` (default: CLIP's BPE incl. start/end tokens) fits ``max_tokens``.
    With nothing selected the text is ``"Answer."`` (the paper's Table 4 first row).
    A region whose description is missing yields ``""`` (the data module masks it out), and so
    does one where every selected part is missing (e.g. ``parts=("content",)`` and no content):
    a placeholder would pass for a description.
    """
    if all(region.get(k) is None for k in ("content", "levels", "scores")):
        return ""
    if not parts:
        return PLACEHOLDER_TEXT
    ratings = []
    levels = region.get("levels") or {}
    scores = region.get("scores") or {}
    for d in dims:
        bits = []
        if "level" in parts and levels.get(d) is not None:
            bits.append(str(levels[d]))
        if "score" in parts and scores.get(d) is not None:
            bits.append(f"{float(scores[d]):.1f}")
        if bits:
            ratings.append(f"{d} {' '.join(bits)}")
    rating_text = "; ".join(ratings)
    content = str(region.get("content") or "") if "content" in parts else ""
    count = count_tokens or clip_token_count

    def join(c: str) -> str:
        return ". ".join(x for x in (c.strip().rstrip("."), rating_text) if x) + ("." if c or rating_text else "")

    words = content.split()
    text = join(" ".join(words))
    while words and count(text) > max_tokens:
        words = words[:-1]
        text = join(" ".join(words))
    return text


_CLIP_TOKENIZER = None


def clip_token_count(text: str) -> int:
    """Number of CLIP BPE tokens of ``text`` including the start and end tokens."""
    global _CLIP_TOKENIZER
    if _CLIP_TOKENIZER is None:
        from open_clip.tokenizer import SimpleTokenizer

        _CLIP_TOKENIZER = SimpleTokenizer()
    return len(_CLIP_TOKENIZER.encode(text)) + 2


# --------------------------------------------------------------------------- records
def empty_region(index: int, area: float = 0.0, seg_score: float | None = None, valid: bool = False) -> dict:
    """A region record with no description (yet)."""
    return {"index": index, "valid": valid, "area": area, "seg_score": seg_score,
            "content": None, "levels": None, "scores": None, "text": ""}


def missing_record(reason: str) -> dict:
    """The description of a region that has none (e.g. ``"empty region"``)."""
    return {"content": None, "levels": None, "scores": None, "parsed_scores": None, "missing_reason": reason}


def make_record(
    *,
    dataset: str,
    image: str,
    mos: float,
    mos_range: Sequence[float],
    higher_better: bool,
    ref: str | None,
    splits: Mapping[str, str],
    regions: Sequence[Mapping[str, Any]],
    annotator: Mapping[str, Any],
    **extra: Any,
) -> dict:
    """The per-sample JSON record of the contract (docs/DESIGN.md, "Shard contract")."""
    rec = {
        "dataset": dataset.lower(),
        "image": image,
        "mos": float(mos),
        "mos_norm": normalise_mos(mos, mos_range, higher_better),
        "mos_range": [float(mos_range[0]), float(mos_range[1])],
        "higher_better": bool(higher_better),
        "ref": ref,
        "splits": dict(splits),
        "regions": [dict(r) for r in regions],
        "annotator": dict(annotator),
        "contract_version": CONTRACT_VERSION,
    }
    rec.update(extra)
    validate_record(rec)
    return rec


class ContractError(ValueError):
    """A sample or shard that does not follow the contract."""


class ShardError(ContractError):
    """A shard or shard directory that cannot be read, resumed or indexed safely."""


def validate_record(rec: Mapping[str, Any], where: str = "") -> None:
    """Raise :class:`ContractError` naming ``where`` when a record breaks the contract."""
    pre = f"{where}: " if where else ""
    for k in ("dataset", "image", "mos", "mos_norm", "mos_range", "higher_better", "splits", "regions", "annotator"):
        if k not in rec:
            raise ContractError(f"{pre}record lacks '{k}'")
    if not np.isfinite(rec["mos"]):
        raise ContractError(f"{pre}MOS is not finite: {rec['mos']}")
    for s, v in rec["splits"].items():
        if v not in SPLIT_VALUES:
            raise ContractError(f"{pre}split '{s}' has value {v!r}, expected one of {SPLIT_VALUES}")
    for i, r in enumerate(rec["regions"]):
        if r.get("index") != i:
            raise ContractError(f"{pre}region {i} has index {r.get('index')}")
        if r.get("content") is None and r.get("levels") is None and r.get("valid") and not r.get("missing_reason"):
            raise ContractError(f"{pre}region {i} is valid but has no description and no missing_reason")


# --------------------------------------------------------------------------- encode / decode
def encode_label_map(label_map: np.ndarray) -> bytes:
    """PNG bytes of a single-channel uint8 label map."""
    if label_map.ndim != 2:
        raise ContractError(f"label map must be 2-D, got shape {label_map.shape}")
    buf = io.BytesIO()
    Image.fromarray(label_map.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def decode_label_map(data: bytes) -> np.ndarray:
    """uint8 HxW label map from PNG bytes (kept single-channel, unlike webdataset's 'pil')."""
    img = Image.open(io.BytesIO(data))
    if img.mode not in ("L", "P"):
        raise ContractError(f"label map must be single-channel, got mode {img.mode}")
    return np.asarray(img, dtype=np.uint8)


def image_ext(image_name: str) -> str:
    """The webdataset extension under which the original bytes are stored."""
    ext = Path(image_name).suffix.lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    return ext if ext in IMAGE_EXTS else "img"


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of ``data``: the record's member checksums and an image's content identity."""
    return hashlib.sha256(data).hexdigest()


def record_bytes(record: Mapping[str, Any]) -> bytes:
    """The record without its ``checksums``, as canonical JSON: what the ``json`` checksum digests."""
    return json.dumps({k: v for k, v in record.items() if k != CHECKSUMS_KEY}, ensure_ascii=False,
                      sort_keys=True).encode("utf-8")


def encode_sample(key: str, image_bytes: bytes, image_name: str, label_map: np.ndarray, record: Mapping) -> dict:
    """A webdataset sample dict (values are bytes, so writers store them unchanged); the record gets
    the ``checksums`` of the other members."""
    validate_record(record, key)
    n = len(record["regions"])
    if int(label_map.max(initial=0)) >= n:
        raise ContractError(f"{key}: label map has value {int(label_map.max())} but only {n} regions")
    members = {image_ext(image_name): bytes(image_bytes), LABEL_MAP_KEY: encode_label_map(label_map)}
    checksums = {name: content_hash(data) for name, data in {**members, JSON_KEY: record_bytes(record)}.items()}
    record = {**record, CHECKSUMS_KEY: checksums}
    return {"__key__": key, **members, JSON_KEY: json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")}


def verify_checksums(sample: Mapping[str, Any], record: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ContractError` naming ``where`` (shard:key) and the member whose bytes differ
    from the record's ``checksums``; records without checksums (older shards) pass unverified."""
    for name, expected in (record.get(CHECKSUMS_KEY) or {}).items():
        if name == JSON_KEY:
            if content_hash(record_bytes(record)) != expected:
                raise ContractError(f"{where}: its JSON record (MOS, regions) does not match its checksum (changed "
                                    f"after annotation: an edit, disk or copy damage); restore the shard or annotate "
                                    f"again")
        elif name not in sample:
            raise ContractError(f"{where}: member '{name}' listed in the checksums is missing")
        elif content_hash(sample[name]) != expected:
            raise ContractError(f"{where}: member '{name}' does not match its checksum (the stored bytes changed "
                                f"after annotation: disk or copy damage); restore the shard or annotate again")


def decode_sample(sample: Mapping[str, Any]) -> dict:
    """Inverse of :func:`encode_sample` on a raw webdataset sample (bytes values).

    Returns ``{"key", "image_bytes", "image_ext", "label_map", "record"}``; raises
    :class:`ContractError` naming the key (and the shard, when webdataset recorded it).
    """
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', '?')}:{key}"
    ext = next((e for e in (*IMAGE_EXTS, "img") if e in sample), None)
    if ext is None:
        raise ContractError(f"{where}: no image entry")
    if LABEL_MAP_KEY not in sample or JSON_KEY not in sample:
        raise ContractError(f"{where}: missing '{LABEL_MAP_KEY}' or '{JSON_KEY}'")
    try:
        record = json.loads(sample[JSON_KEY])
    except (ValueError, UnicodeDecodeError) as e:
        raise ContractError(f"{where}: unreadable json ({e})") from e
    validate_record(record, where)
    verify_checksums(sample, record, where)
    return {"key": key, "image_bytes": sample[ext], "image_ext": ext,
            "label_map": decode_label_map(sample[LABEL_MAP_KEY]), "record": record}


# --------------------------------------------------------------------------- index
def write_index(shard_dir: str | Path, shards: Iterable[str], count: int, dataset: str,
                annotator: Mapping[str, Any], **extra: Any) -> Path:
    """Write ``index.json`` beside the shards (atomically)."""
    shard_dir = Path(shard_dir)
    data = {"contract_version": CONTRACT_VERSION, "dataset": dataset.lower(), "count": int(count),
            "shards": sorted(shards), "annotator": dict(annotator), **extra}
    tmp = shard_dir / f"{INDEX_NAME}.{os.getpid()}.tmp"  # per-process: concurrent writers never share it
    with naming_the_file(tmp):
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(shard_dir / INDEX_NAME)
    return shard_dir / INDEX_NAME


def read_index(shard_dir: str | Path) -> dict:
    """``index.json`` of a shard directory, with shard paths made absolute and checked."""
    shard_dir = Path(shard_dir)
    path = shard_dir / INDEX_NAME
    if not shard_dir.is_dir():
        raise ContractError(f"{shard_dir}: shard directory not found; check the path or annotate into it first "
                            f"(python -m annotate --out {shard_dir} ...)")
    if not path.is_file():
        raise ContractError(f"{shard_dir}: no {INDEX_NAME}, so not an annotated shard directory (empty, or the "
                            f"annotation never finished); run python -m annotate --out {shard_dir} ...")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ContractError(f"{path}: unreadable ({e}); rerun the annotation to rebuild it") from e
    missing = [s for s in data["shards"] if not (shard_dir / s).is_file()]
    if missing:
        raise ContractError(f"{path}: lists shards that do not exist: {missing[:5]}")
    data["shard_paths"] = [str(shard_dir / s) for s in data["shards"]]
    return data
