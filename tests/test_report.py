"""The HTML report of a scoring run: content, self-containment, and a real headless browser."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsfiqa_core.contract import DIMENSIONS
from rsfiqa.inference.report import ReportWriter, correlations, thumbnails_folder

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
# A probe appended to a copy of the page (the page itself has no script): after load it logs how
# many images failed to decode and how many there are.
PROBE = ("<script>window.addEventListener('load',()=>{const im=[...document.images];"
         "console.log('IMAGES '+im.length+' BROKEN '+im.filter(i=>!(i.complete&&i.naturalWidth>0)).length)})"
         "</script>")


def region(index: int, overall: float | None) -> dict:
    scores = {d: 3.0 for d in DIMENSIONS} | {"overall": overall}
    levels = {d: "fair" for d in DIMENSIONS} | {"overall": None if overall is None else "good"}
    return {"index": index, "valid": overall is not None, "area": 0.25, "content": f"region <{index}> & co",
            "levels": levels, "scores": scores}


def written(page: Path, n: int, seed: int = 0, with_mos: bool = True) -> ReportWriter:
    """A report of ``n`` random photos added to a :class:`ReportWriter` of ``page``."""
    rng = np.random.default_rng(seed)
    report = ReportWriter(page, "scale & text")
    for i in range(n):
        rgb = rng.integers(0, 256, (240 + 4 * i, 320, 3), dtype=np.uint8)
        labels = np.zeros(rgb.shape[:2], np.uint8)
        labels[:, 160:] = 1
        record = {"image": f"photos/p{i}.jpg", "score": float(10 * i), "score_norm": i / 10,
                  "regions": [region(0, 4.5), region(1, None)]}
        report.add(record, rgb, labels, float(10 * i + rng.normal()) if with_mos else None)
    return report


def test_report_sorted_escaped_with_thumbnails_beside_it(tmp_path: Path) -> None:
    report = written(tmp_path / "r.html", 4)
    assert report.entries[0].record["image"] == "photos/p0.jpg"
    page = report.write("Run <1>").read_text()
    names = re.findall(r'class="name"[^>]*>([^<]+)<', page)
    assert names == ["p3.jpg", "p2.jpg", "p1.jpg", "p0.jpg"]          # best predicted first
    assert "region &lt;0&gt; &amp; co" in page and "Run &lt;1&gt;" in page   # user text escaped
    sources = re.findall(r'src="([^"]+)"', page)
    thumbs = [s for s in sources if not s.startswith("data:")]
    assert len(thumbs) == 2 * 4 and len(sources) == 2 * 4 + 1           # 2 thumbnails per photo + the scatter plot
    assert all(s.startswith("r_files/") and (tmp_path / s).is_file() for s in thumbs)
    assert Image.open(tmp_path / thumbs[0]).format == "JPEG"
    assert "SRCC <b>1.000</b>" in page                                  # MOS known: metrics + scatter
    assert "good (4.50)" in page and "<td>—</td>" in page               # a missing rating is a dash


def test_report_keeps_no_thumbnail_in_memory_and_drops_an_earlier_runs(tmp_path: Path) -> None:
    written(tmp_path / "r.html", 5).write("first")
    report = written(tmp_path / "r.html", 2)
    assert all(not isinstance(v, (bytes, np.ndarray)) for e in report.entries for v in vars(e).values())
    assert sorted(p.name for p in thumbnails_folder(tmp_path / "r.html").iterdir()) == [
        "000001.jpg", "000001.overlay.jpg", "000002.jpg", "000002.overlay.jpg"]


def test_report_without_mos_has_no_metrics(tmp_path: Path) -> None:
    page = written(tmp_path / "r.html", 3, with_mos=False).write("t").read_text()
    assert "SRCC" not in page and page.count("<img") == 6


def test_correlations_match_definition() -> None:
    mos, pred = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    values = correlations(mos, pred)
    assert values["srcc"] == pytest.approx(0.8)
    assert values["plcc"] == pytest.approx(np.corrcoef(mos, pred)[0, 1])


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed (Debian package 'chromium'; "
                                            ".ci/run installs it)")
def test_report_renders_in_headless_browser(tmp_path: Path) -> None:
    page = written(tmp_path / "report.html", 3).write("browser check")
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    shot = Path(os.environ.get("RSFIQA_REPORT_SHOT", tmp_path / "shot.png"))
    run = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                          "--v=0", "--virtual-time-budget=3000", f"--screenshot={shot}", "--window-size=1000,900",
                          probed.as_uri()], capture_output=True, text=True, timeout=120)
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert any("IMAGES 7 BROKEN 0" in line for line in console), run.stderr[-2000:]
    assert [line for line in console if "IMAGES" not in line] == []      # no other console message
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    colourful = (pixels.max(-1) - pixels.min(-1)) > 60                   # the random photos, not text
    assert colourful.mean() > 0.02                                       # photos drawn (text alone: ~0)
