"""The HTML page of a scoring run (``rsfiqa score ... --report report.html``).

Photos are sorted by predicted score, best first. Each card shows the photo, its region quality
overlay (regions filled by the describer's ``overall`` score, as in the heatmaps), the predicted
score, the MOS when known, and per region its content and the five ratings (level and score).
With MOS for at least three photos the page opens with PLCC/SRCC and a scatter plot. For a model
whose score does not read regions, each overlay is captioned :data:`ANNOTATOR_VIEW_NOTE`.

Memory stays bounded however many photos a run scores: each photo's two JPEG thumbnails are
written, as the photo is scored, into the folder ``<page name>_files/`` beside the page
(``report.html`` -> ``report_files/000001.jpg`` and ``000001.overlay.jpg``) and only the records
stay in memory; the page links them by relative paths and loads them lazily. Page and folder go
together (copy both); they need no server and no network. The scatter plot is embedded as a
``data:`` URI, a heatmap PNG written by the same run is linked by a relative path. The page has no
script.
"""
from __future__ import annotations

import base64
import html
import io
import math
import re
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from rsfiqa.inference.heatmap import quality_overlay
from rsfiqa_core.contract import DIMENSIONS

THUMB_SIDE = 360
FILES_SUFFIX = "_files"
JPEG_QUALITY = 82
MIN_PHOTOS_FOR_METRICS = 3


@dataclass
class ReportEntry:
    """One scored photo as the page shows it."""

    record: dict[str, Any]              # the scorer's record: image, score, score_norm, regions
    photo_link: str                     # its thumbnail, relative to the page
    overlay_link: str                   # its region overlay thumbnail, relative to the page
    mos: float | None = None
    heatmap_link: str | None = None     # relative to the page


ANNOTATOR_VIEW_NOTE = ("Overlay and regions: the annotator's view of the photo. This model's score reads the "
                       "whole image, not these regions.")


def thumbnail_jpeg(rgb: np.ndarray, side: int = THUMB_SIDE) -> bytes:
    """HxWx3 uint8 (or float 0..1) -> JPEG bytes whose long side is at most ``side``."""
    if rgb.dtype != np.uint8:
        rgb = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    image = Image.fromarray(rgb)
    image.thumbnail((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


THUMBNAIL_NAME = re.compile(r"\d{6}(\.overlay)?\.jpg")  # report_entry's file names


def is_report_thumbnail(path: Path) -> bool:
    """A thumbnail an earlier report wrote: a :data:`THUMBNAIL_NAME` in ``<page>_files/`` beside ``<page>.html``."""
    folder = path.parent
    return (bool(THUMBNAIL_NAME.fullmatch(path.name)) and folder.name.endswith(FILES_SUFFIX)
            and folder.with_name(folder.name[:-len(FILES_SUFFIX)] + ".html").is_file())


def thumbnails_folder(page: str | Path) -> Path:
    """``report.html`` -> ``report_files``: where the page's thumbnails are written."""
    page = Path(page)
    return page.with_name(page.stem + FILES_SUFFIX)


def report_entry(record: Mapping[str, Any], rgb: np.ndarray, label_map: np.ndarray, page: str | Path, number: int,
                 mos: float | None = None, heatmap_link: str | None = None) -> ReportEntry:
    """The entry of one scored photo from its record, upright image and label map; its thumbnails are
    written now as ``<number>.jpg`` and ``<number>.overlay.jpg`` into the page's folder."""
    small = Image.fromarray(rgb)
    small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR)
    small_rgb = np.asarray(small)
    small_labels = np.asarray(Image.fromarray(label_map.astype(np.uint8)).resize(small.size, Image.NEAREST))
    overlay = quality_overlay(small_rgb, small_labels, record["regions"])
    folder = thumbnails_folder(page)
    names = (f"{number:06d}.jpg", f"{number:06d}.overlay.jpg")
    for name, image in zip(names, (small_rgb, overlay)):
        (folder / name).write_bytes(thumbnail_jpeg(image))
    photo, overlay_link = (f"{folder.name}/{name}" for name in names)
    return ReportEntry(dict(record), photo, overlay_link, mos, heatmap_link)


def relative_link(target: str | Path, page: str | Path) -> str:
    """``target`` as a URL path relative to the folder of ``page``."""
    return Path(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)).as_posix()


def correlations(mos: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    """PLCC and SRCC (torchmetrics) of predicted vs true MOS."""
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef  # --labels only: plain scoring skips them
    x, y = torch.tensor(predicted, dtype=torch.float64), torch.tensor(mos, dtype=torch.float64)
    return {"plcc": float(pearson_corrcoef(x, y)), "srcc": float(spearman_corrcoef(x, y))}


def scatter_png(mos: Sequence[float], predicted: Sequence[float], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # --labels only: plain scoring skips them

    from rsfiqa.eval.plots import scatter_figure
    buffer = io.BytesIO()
    FigureCanvasAgg(scatter_figure(mos, predicted, title)).print_png(buffer)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# --------------------------------------------------------------------------- page
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}.meta{color:#555;margin:.2em 0}
.summary{display:flex;gap:2em;align-items:center;flex-wrap:wrap;margin:1em 0}
.metric{font-size:1.3em}.metric b{font-size:1.5em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em;margin:.8em 0}
.head{display:flex;gap:1.5em;align-items:baseline;flex-wrap:wrap}
.rank{color:#888}.name{font-weight:600}.score{font-size:1.3em}.mos{color:#555}
.imgs{display:flex;gap:.6em;flex-wrap:wrap;margin:.5em 0}.imgs img{max-width:360px;border-radius:3px}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #e3e3e3;padding:2px 6px;text-align:left}
th{background:#f2f2f2}.errors{color:#a00}
"""


def region_rows(regions: Sequence[Mapping[str, Any]]) -> str:
    """Table rows: index, area, content, then ``level (score)`` per dimension."""
    rows = []
    for region in regions:
        levels, scores = region.get("levels") or {}, region.get("scores") or {}
        cells = [str(region.get("index", "")), f"{100 * float(region.get('area') or 0):.0f}%",
                 region.get("content") or region.get("missing_reason") or "—"]
        for dim in DIMENSIONS:
            score = scores.get(dim)
            cells.append(f"{levels.get(dim) or '—'}" + (f" ({score:.2f})" if score is not None else ""))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(rows)


def card(rank: int, entry: ReportEntry, scale_text: str, overlay_note: str = "") -> str:
    record = entry.record
    name = html.escape(Path(record["image"]).name)
    mos = f'<span class="mos">MOS {entry.mos:.2f}</span>' if entry.mos is not None else ""
    link = (f'<a href="{html.escape(entry.heatmap_link)}">heatmap</a>' if entry.heatmap_link else "")
    header = "".join(f"<th>{h}</th>" for h in ("region", "area", "content", *DIMENSIONS))
    return f"""<div class="card" id="photo-{rank}">
<div class="head"><span class="rank">#{rank}</span><span class="name" title="{html.escape(record['image'])}">{name}</span>
<span class="score" title="{html.escape(scale_text)}">predicted {record['score']:.2f}</span>{mos}{link}</div>
<div class="imgs"><img alt="{name}" loading="lazy" src="{html.escape(entry.photo_link)}">
<img alt="{name}: region quality overlay" loading="lazy" src="{html.escape(entry.overlay_link)}"></div>
{f'<div class="meta">{html.escape(overlay_note)}</div>' if overlay_note else ''}
<table><tr>{header}</tr>
{region_rows(record['regions'])}
</table></div>"""


def summary_block(entries: Sequence[ReportEntry]) -> str:
    """PLCC/SRCC and the scatter plot, when enough photos have a MOS; else nothing."""
    known = [e for e in entries if e.mos is not None and math.isfinite(e.mos)]
    if len(known) < MIN_PHOTOS_FOR_METRICS:
        return ""
    mos, predicted = [e.mos for e in known], [e.record["score"] for e in known]
    metrics = correlations(mos, predicted)
    plot = scatter_png(mos, predicted, f"{len(known)} photos: PLCC {metrics['plcc']:.3f}, SRCC {metrics['srcc']:.3f}")
    return f"""<div class="summary"><div><div class="metric">SRCC <b>{metrics['srcc']:.3f}</b></div>
<div class="metric">PLCC <b>{metrics['plcc']:.3f}</b></div><div class="meta">{len(known)} photos with a MOS</div></div>
<img alt="predicted vs true MOS" src="{data_uri(plot, 'image/png')}" width="360"></div>"""


def render_report(entries: Sequence[ReportEntry], title: str, scale_text: str, model_text: str = "",
                  errors: Sequence[str] = (), overlay_note: str = "") -> str:
    """The page's HTML (module docstring); ``overlay_note`` captions every overlay."""
    ordered = sorted(entries, key=lambda e: e.record["score"], reverse=True)
    failed = ("<div class='errors'><b>not scored:</b><ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in errors)
              + "</ul></div>") if errors else ""
    cards = "\n".join(card(rank, entry, scale_text, overlay_note) for rank, entry in enumerate(ordered, 1))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="meta">{len(ordered)} photos, sorted by predicted quality (best first). {html.escape(scale_text)}</div>
<div class="meta">{html.escape(model_text)}</div>
{summary_block(ordered)}{failed}
{cards}
</body></html>
"""


def write_report(path: str | Path, entries: Sequence[ReportEntry], title: str, scale_text: str,
                 model_text: str = "", errors: Sequence[str] = (), overlay_note: str = "") -> Path:
    """Write the page to ``path`` (UTF-8) and return it."""
    path = Path(path)
    path.write_text(render_report(entries, title, scale_text, model_text, errors, overlay_note), encoding="utf-8")
    return path


class ReportWriter:
    """A run's report built as photos are scored: :meth:`add` writes a photo's thumbnails at once and
    keeps its record; :meth:`write` writes the page. Thumbnails of an earlier run of the same page are
    removed first, so the folder holds this run's only."""

    def __init__(self, page: str | Path, scale_text: str, overlay_note: str = ""):
        self.page, self.scale_text, self.overlay_note = Path(page), scale_text, overlay_note
        self.entries: list[ReportEntry] = []
        folder = thumbnails_folder(self.page)
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():
            if THUMBNAIL_NAME.fullmatch(old.name):  # only what a report writes: nothing of the user's
                old.unlink()

    @property
    def count(self) -> int:
        return len(self.entries)

    def add(self, record: Mapping[str, Any], rgb: np.ndarray, label_map: np.ndarray, mos: float | None = None,
            heatmap_link: str | None = None) -> None:
        self.entries.append(report_entry(record, rgb, label_map, self.page, self.count + 1, mos, heatmap_link))

    def write(self, title: str, model_text: str = "", errors: Sequence[str] = ()) -> Path:
        return write_report(self.page, self.entries, title, self.scale_text, model_text, errors, self.overlay_note)
