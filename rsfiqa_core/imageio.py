"""Robust image reading shared by annotation, training data and scoring.

Every reader of user images goes through :func:`load_rgb`, so each kind of bad input gets the
same documented treatment (README, "Failure behaviour"):

* unreadable, empty, truncated or non-image files raise :class:`ImageError` naming the file;
* EXIF orientation is applied (photos are processed upright);
* grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images become 8-bit RGB
  (16-bit modes ``I;16*`` are scaled by 255/65535, so a dark 16-bit image stays dark);
* animated images use their first frame (recorded in ``info["frames"]``);
* images over ``max_pixels`` are refused with a clear message (decompression-bomb guard), checked
  on the header before any pixel is decoded; Pillow's own warning threshold (about 89 MP) is
  superseded by ``max_pixels``, its hard ceiling (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, about
  179 MP) still applies and must be raised there for larger ``max_pixels``;
* ``downscale_to`` (long side in pixels) bounds the returned array: a JPEG is decoded at the
  smallest DCT scale (1/2, 1/4, 1/8; Pillow's ``draft``) that still covers that size, then any
  image is resized (Pillow's antialiased bicubic) to it. Other formats are decoded at full size
  first, so their peak memory is the decoded image (3-4 bytes a pixel) plus the copies made for
  orientation and mode conversion. Images within ``downscale_to`` come back exactly as without it.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 120_000_000  # 120 MP: more than any IQA dataset, far less than a bomb


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def to_rgb8(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # I;16 is 16-bit by definition; 32-bit "I" has no fixed range: 16-bit scale once a value exceeds 255
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = (arr - arr.min()) / max(float(np.ptp(arr)), 1e-12)
        return Image.fromarray((arr * 255 + 0.5).astype(np.uint8), "L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_rgb(data: bytes, name: str = "<bytes>", max_pixels: int | None = DEFAULT_MAX_PIXELS,
               downscale_to: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode image bytes to an upright HxWx3 uint8 RGB array; see the module docstring."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    info: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides below
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the limit of "
                                 f"{max_pixels / 1e6:.0f} MP (decompression-bomb guard); downscale it first "
                                 f"or raise max_pixels")
            info["frames"] = getattr(img, "n_frames", 1)
            info["mode"] = img.mode
            if downscale_to is not None and max(w, h) > downscale_to and hasattr(img, "draft"):
                th, tw = reduced_size((h, w), downscale_to)
                img.draft(img.mode, (tw, th))  # JPEG: decode at the smallest scale >= the target size
            img.load()
            info["decoded_size"] = img.size  # (width, height) as decoded: smaller than the file's after a JPEG draft
            ImageOps.exif_transpose(img, in_place=True)  # no copy when upright already
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused by Pillow's decompression-bomb guard ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a readable image (unknown format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: broken image data ({e})") from e
    rgb = to_rgb8(img)
    del img  # the decoded original can go once converted
    if downscale_to is not None and max(rgb.size) > downscale_to:
        rgb = shrink(rgb, downscale_to)
        info["downscaled_to"] = rgb.size
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{name}: image has no pixels")
    return arr, info


def shrink(img: Image.Image, long_side: int | None) -> Image.Image:
    """``img`` resized (Pillow's antialiased bicubic) so that its long side is at most ``long_side``."""
    h, w = reduced_size((img.height, img.width), long_side)
    return img if (w, h) == img.size else img.resize((w, h), Image.BICUBIC)


def load_rgb(path: str | Path, **kwargs: Any) -> tuple[np.ndarray, bytes, dict[str, Any]]:
    """Read ``path``: (upright RGB uint8 array, the file's original bytes, info)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read file ({e.strerror or e})") from e
    arr, info = decode_rgb(data, str(path), **kwargs)
    return arr, data, info


def reduced_size(shape: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """(H, W) scaled so that the long side is at most ``long_side`` (never enlarged)."""
    h, w = shape
    if long_side is None or max(h, w) <= long_side:
        return h, w
    s = long_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def downscale(image: np.ndarray, long_side: int | None) -> np.ndarray:
    """RGB uint8 image resized (area-averaged) so that its long side is at most ``long_side``."""
    h, w = reduced_size(image.shape[:2], long_side)
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BOX), dtype=np.uint8)


def check_rgb(image: np.ndarray) -> None:
    """Raise a clear error unless ``image`` is an HxWx3 uint8 array."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {type(image).__name__} "
                         f"{getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}")


def printable(name: str) -> str:
    """``name`` safe to print and to store as UTF-8 (undecodable bytes shown as ``\\udcXX``)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")
