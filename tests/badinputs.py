"""A generated corpus of bad inputs, shared by the reliability tests (docs/FAILURES.md lists them).

Every kind of messy input a user's dataset holds is one :class:`BadInput`: the file it puts on
disk (or none), the label row it puts in ``labels.csv`` (or none) and what must happen to it:

* ``outcome == "ok"``: the image is used; ``upright_hw`` is the (H, W) it must decode to
  (EXIF orientation applied) and ``check`` a property of the decoded RGB pixels;
* ``outcome == "skip"``: the run goes on without it and records ``reason``: a label problem's
  skip category (``annotate.datasets.base``), or a phrase of the :class:`rsfiqa_core.imageio.ImageError`
  message. :func:`reported_item` is the name the annotation summary reports it under.

All images are tiny (at most 64 px) and generated in memory, so writing the corpus takes
milliseconds. The decompression-bomb case is a real PNG *header* claiming 12000x11000 pixels
(132 MP, over the default ``max_pixels`` of 120 MP; no pixel data), which is all the guard needs
to see.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from rsfiqa_core.imageio import printable

SIZE = (40, 56)  # (H, W) of the ordinary generated images
MOS_RANGE = (0.0, 100.0)

# --------------------------------------------------------------------------- image bytes


def _scene(hw: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with a bright square: HxWx3 uint8, not uniform (segmentable)."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 200 // max(w - 1, 1), yy * 200 // max(h - 1, 1), np.full((h, w), (90 + seed * 20) % 256)], -1)
    rgb[h // 4: h // 2, w // 4: w // 2] = (240, 230, 40)
    return rgb.astype(np.uint8)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg(seed: int = 0) -> bytes:
    """An ordinary RGB JPEG of :data:`SIZE`."""
    return _save(Image.fromarray(_scene(seed=seed)), "JPEG", quality=90)


def truncated_jpeg() -> bytes:
    return jpeg(1)[: len(jpeg(1)) // 2]


def grayscale_png() -> bytes:
    return _save(Image.fromarray(_scene()).convert("L"), "PNG")


def rgba_png() -> bytes:
    """Left half opaque red, right half fully transparent (must composite on white)."""
    rgba = np.zeros((*SIZE, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, : SIZE[1] // 2, 3] = 255
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def palette_png() -> bytes:
    return _save(Image.fromarray(_scene()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")


def cmyk_jpeg() -> bytes:
    return _save(Image.fromarray(_scene()).convert("CMYK"), "JPEG", quality=90)


def png16() -> bytes:
    """16-bit grayscale PNG using the full 0..65535 range (a ramp left to right)."""
    ramp = np.tile(np.linspace(0, 65535, SIZE[1]).astype(np.uint16), (SIZE[0], 1))
    return _save(Image.fromarray(ramp), "PNG")


def dark_png16() -> bytes:
    """16-bit PNG whose values stay below 256 of 65535: nearly black, never 'brightened'."""
    return _save(Image.fromarray(np.full(SIZE, 200, np.uint16)), "PNG")


def exif_rotated_jpeg() -> bytes:
    """Stored sideways (W x H = 56 x 40) with EXIF Orientation 6: upright it is 56 high, 40 wide."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(_scene()), "JPEG", quality=90, exif=exif.tobytes())


def one_pixel_png() -> bytes:
    return _save(Image.new("RGB", (1, 1), (120, 60, 30)), "PNG")


def bomb_png(width: int = 12_000, height: int = 11_000) -> bytes:
    """A PNG signature + IHDR chunk claiming ``width x height`` RGB pixels, with an empty IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    """Three frames: red, green, blue (the first frame, red, is the one used)."""
    frames = [Image.new("RGB", SIZE[::-1], c) for c in ((220, 20, 20), (20, 220, 20), (20, 20, 220))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


# --------------------------------------------------------------------------- pixel checks
def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _composited_on_white(rgb: np.ndarray) -> bool:
    left, right = rgb[:, : SIZE[1] // 2], rgb[:, SIZE[1] // 2:]
    return bool((left == (255, 0, 0)).all() and (right == 255).all())


def _full_ramp(rgb: np.ndarray) -> bool:
    return _is_gray(rgb) and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255


def _nearly_black(rgb: np.ndarray) -> bool:
    return int(rgb.max()) <= 1


def _red_first_frame(rgb: np.ndarray) -> bool:
    return bool(rgb[..., 0].min() > 180 and rgb[..., 1:].max() < 60)


def _colourful(rgb: np.ndarray) -> bool:
    return not _is_gray(rgb)


# --------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class BadInput:
    """One kind of bad input (module docstring)."""

    kind: str
    name: str                              # file (and label) name; may hold surrogate-escaped bytes
    data: bytes | None                     # file content; None: no file on disk
    mos: float | None                      # label row's score; None: no label row
    outcome: str                           # "ok" | "skip"
    reason: str = ""                       # for skips: a phrase of the recorded reason
    upright_hw: tuple[int, int] | None = None
    check: Callable[[np.ndarray], bool] | None = None
    extra_rows: tuple[tuple[str, str], ...] = ()  # more raw (name, score) label rows

    @property
    def has_file(self) -> bool:
        return self.data is not None


def image_kinds() -> list[BadInput]:
    """Kinds that are a property of the image file (each has a file and a valid label row)."""
    ok = "ok"  # the outcomes: "ok" (used) or "skip"
    return [
        BadInput("truncated_jpeg", "truncated.jpg", truncated_jpeg(), 10.0, "skip", "broken image data"),
        BadInput("zero_byte", "empty.jpg", b"", 20.0, "skip", "empty file"),
        BadInput("text_as_image", "notes.png", b"just some text, not pixels\n", 30.0, "skip",
                 "not a readable image"),
        BadInput("grayscale", "gray.png", grayscale_png(), 40.0, ok, upright_hw=SIZE, check=_is_gray),
        BadInput("rgba", "rgba.png", rgba_png(), 50.0, ok, upright_hw=SIZE, check=_composited_on_white),
        BadInput("palette", "palette.png", palette_png(), 60.0, ok, upright_hw=SIZE, check=_colourful),
        BadInput("cmyk_jpeg", "cmyk.jpg", cmyk_jpeg(), 70.0, ok, upright_hw=SIZE, check=_colourful),
        BadInput("png16", "deep.png", png16(), 80.0, ok, upright_hw=SIZE, check=_full_ramp),
        BadInput("png16_dark", "deep_dark.png", dark_png16(), 15.0, ok, upright_hw=SIZE, check=_nearly_black),
        BadInput("exif_rotated", "rotated.jpg", exif_rotated_jpeg(), 90.0, ok, upright_hw=SIZE[::-1],
                 check=_colourful),
        BadInput("one_pixel", "dot.png", one_pixel_png(), 25.0, ok, upright_hw=(1, 1)),
        BadInput("huge", "bomb.png", bomb_png(), 35.0, "skip", "exceeds the limit of 120 MP"),
        BadInput("animated_gif", "anim.gif", animated_gif(), 45.0, ok, upright_hw=SIZE, check=_red_first_frame),
    ]


NON_UTF8_NAME = os.fsdecode(b"caf\xe9.jpg")  # latin-1 'é': undecodable as UTF-8 (a surrogate escape)


def label_kinds() -> list[BadInput]:
    """Kinds that are a property of the label file (the images themselves are fine)."""
    return [
        BadInput("missing_image", "gone.jpg", None, 55.0, "skip", "image file not found"),
        BadInput("no_label", "unlabelled.jpg", jpeg(2), None, "skip", "no label"),
        BadInput("nan_mos", "nan.jpg", jpeg(3), float("nan"), "skip", "invalid MOS"),
        BadInput("negative_mos", "negative.jpg", jpeg(4), -5.0, "skip", "invalid MOS"),
        BadInput("out_of_range_mos", "high.jpg", jpeg(5), 150.0, "skip", "invalid MOS"),
        # the first row is kept (the image is annotated once), the second is skipped
        BadInput("duplicate_name", "twice.jpg", jpeg(6), 65.0, "ok", "duplicate image name", upright_hw=SIZE,
                 extra_rows=(("twice.jpg", "75"),)),
        BadInput("non_utf8_name", NON_UTF8_NAME, jpeg(7), 85.0, "skip", "file name is not valid UTF-8"),
    ]


def all_kinds() -> list[BadInput]:
    return image_kinds() + label_kinds()


def reported_item(kind: BadInput) -> str:
    """The ``item`` of the kind's skip record in an annotation summary of :func:`write_csv_dataset`:
    the label row's name, or the file's path under the root for an unlabelled file, made printable
    as the adapters report names (undecodable bytes escaped)."""
    return printable(f"images/{kind.name}" if kind.mos is None else kind.name)


def write_file(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/name``; ``name`` may hold surrogate-escaped (non-UTF-8) bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.path.join(os.fsencode(folder), os.fsencode(name))
    with open(path, "wb") as f:
        f.write(data)
    return Path(os.fsdecode(path))


def write_images(folder: Path, kinds: list[BadInput] | None = None) -> dict[str, Path]:
    """The files of ``kinds`` (default: the image kinds) in ``folder``; kind -> path."""
    return {k.kind: write_file(folder, k.name, k.data) for k in (kinds or image_kinds()) if k.has_file}


def _csv_row(name: str, score: str) -> bytes:
    return os.fsencode(name) + b"," + score.encode() + b"\n"


def write_csv_dataset(root: Path, kinds: list[BadInput] | None = None, good: int = 2) -> list[BadInput]:
    """A "folder + CSV" dataset (``annotate.datasets.csv_folder``) holding every kind in ``kinds``
    (default: all) plus ``good`` ordinary images: ``root/images/*`` and ``root/labels.csv`` (written
    as bytes so a non-UTF-8 name survives). Returns the kinds, the ordinary images first."""
    ordinary = [BadInput(f"good_{i}", f"good_{i}.jpg", jpeg(10 + i), 20.0 + 60.0 * i / max(good - 1, 1), "ok",
                         upright_hw=SIZE, check=_colourful) for i in range(good)]
    kinds = ordinary + (all_kinds() if kinds is None else list(kinds))
    rows = b"image,mos\n"
    for k in kinds:
        if k.has_file:
            write_file(root / "images", k.name, k.data)
        if k.mos is not None:
            rows += _csv_row(k.name, repr(k.mos))  # repr(nan) == "nan", which the adapter reads as NaN
        rows += b"".join(_csv_row(name, score) for name, score in k.extra_rows)
    (root / "labels.csv").write_bytes(rows)
    return kinds


# --------------------------------------------------------------------------- runs that go wrong
@dataclass(frozen=True)
class BadRun:
    """A way a run's outputs, reruns or set-up can go wrong (issue 15's classes); ``kind`` is its row in
    docs/FAILURES.md ("Outputs, reruns and user errors") and ``tests/test_bad_runs.py`` has ``test_<kind>``."""

    kind: str
    command: str                           # "score" | "annotate" | "fit"
    what: str                              # the situation, as a user meets it


def run_kinds() -> list[BadRun]:
    return [
        BadRun("heatmap_into_scanned_folder", "score", "--heatmap names the folder being scored"),
        BadRun("heatmap_name_collision", "score", "y.jpg and y.png, or a/x.jpg and b/x.jpg, in one run"),
        BadRun("heatmap_folder_inside_scanned_folder", "score", "--heatmap photos/heat, scored twice"),
        BadRun("out_names_an_input", "score", "--out (or --report) is one of the files being scored"),
        BadRun("heatmap_folder_unusable", "score", "--heatmap cannot be created or written"),
        BadRun("one_heatmap_unwritable", "score", "writing one image's heatmap fails"),
        BadRun("interrupted_scoring", "score", "Ctrl-C after some images were scored (JSON output)"),
        BadRun("mos_corrected", "annotate", "a MOS corrected in the labels, then a rerun"),
        BadRun("image_replaced", "annotate", "an image replaced under the same name, then a rerun"),
        BadRun("other_root", "annotate", "the same --out with another --root"),
        BadRun("rows_appended_without_mos_range", "annotate", "rows appended; mos_range inferred from the rows"),
        BadRun("same_image_twice", "annotate", "one image under two names (images/x.jpg and x.jpg, or a copy)"),
        BadRun("shard_folder_twice", "fit", "train_shards lists one shard folder twice (or a copy of it)"),
        BadRun("resume_other_network", "fit", "--config A --ckpt_path B, B trained with another network"),
        BadRun("zeroed_bytes_in_shard", "fit", "3000 zeroed bytes inside a stored image or label map"),
        BadRun("malformed_yaml", "annotate, fit", "a config file or override that is not YAML"),
        BadRun("random_bytes_checkpoint", "fit, score", "--ckpt_path / --ckpt naming a file of random bytes"),
        BadRun("out_in_missing_folder", "score", "--out in a folder that does not exist"),
        BadRun("shards_folder_missing_or_empty", "fit", "data.train_shards names no folder, or an empty one"),
        BadRun("interrupted_annotation", "annotate", "Ctrl-C during annotation"),
        BadRun("disk_full", "annotate, score", "the disk fills while shards or scores are written"),
        BadRun("debug_flag", "annotate, fit, score", "--debug: the traceback instead of one line"),
        BadRun("broken_symlink", "score, annotate", "a dangling symbolic link among the images"),
        BadRun("unlisted_extension", "score", "files with other extensions in a scored folder"),
        BadRun("skipped_names_in_summary", "annotate", "which files were skipped, not only why"),
    ]


def round3_kinds() -> list[BadRun]:
    """Issue 24's classes (stored bytes verified, labels matched exactly, outputs never clobbered, removals
    noticed, degenerate data refused, bounded workers and quiet interrupts); ``tests/test_bad_runs_round3.py``
    has ``test_<kind>`` for each, docs/FAILURES.md its row."""
    return [
        BadRun("shipped_model_tampered", "score", "bytes of the shipped file's weights flipped, a NaN written "
                                                  "into a weight, or a hyper-parameter edited"),
        BadRun("non_finite_prediction", "score", "the network predicts NaN/inf for an image"),
        BadRun("checkpoint_tampered", "fit, score", "a weight in a checkpoint changed after training"),
        BadRun("feature_cache_entry_damaged", "fit", "a cache entry emptied, truncated or bit-flipped"),
        BadRun("non_finite_features", "fit", "NaN image features reach the ridge's closed-form fit"),
        BadRun("mos_edited_in_shard", "fit", "one digit of a stored record's MOS changed"),
        BadRun("labels_not_exact", "score", "--labels with a/x.jpg and b/x.jpg, a name twice, nan/inf MOS, NFD names"),
        BadRun("out_is_labels", "score", "--out (or --report) names the --labels file"),
        BadRun("heatmaps_of_an_earlier_run", "score", "a rerun on a folder holding *.heatmap.png files"),
        BadRun("report_beside_the_photos", "score", "--report whose thumbnails folder is the scanned folder, or "
                                                    "a rerun on a folder holding an earlier report"),
        BadRun("output_folder_unusable", "make model, annotate", "--out in a folder that cannot be created/written"),
        BadRun("inputs_removed", "annotate", "a label row or image file deleted, then a rerun"),
        BadRun("degenerate_data", "fit, annotate", "all MOS identical, 1 validation image, batch_size 0, lr -1, "
                                                   "--limit -1"),
        BadRun("too_many_workers", "annotate, score", "--workers 100000, or worker processes that cannot start"),
        BadRun("interrupted_scoring_with_report", "score", "Ctrl-C during score with --report and worker processes"),
        BadRun("disk_full_while_sealing", "annotate", "the disk fills while a shard is written: no traceback after "
                                                      "the one line"),
    ]


def broken_link(folder: Path, name: str) -> Path:
    """A symbolic link ``folder/name`` whose target does not exist."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / name
    link.symlink_to(folder / f"missing-target-of-{name}")
    return link


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def zero_member_bytes(shard: Path, suffix: str, count: int = 3000) -> str:
    """Zero ``count`` bytes in the middle of the first tar member whose name ends in ``suffix`` (the tar
    structure stays intact, as after disk damage); returns the member's name."""
    import tarfile

    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
    if member.size <= count:
        raise ValueError(f"{member.name} has only {member.size} bytes")
    start = member.offset_data + (member.size - count) // 2
    with open(shard, "r+b") as f:
        f.seek(start)
        f.write(bytes(count))
    return member.name


def noisy_jpeg(hw: tuple[int, int] = (96, 128), seed: int = 0) -> bytes:
    """A JPEG of random noise: large enough (>10 kB) that zeroing 3000 bytes stays inside its data."""
    rgb = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    return _save(Image.fromarray(rgb), "JPEG", quality=95)
