"""The demo (``python -m demo``): every step runs on the real bundled photos and every output it
prints exists; a failing step stops it with a message naming the step."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: the demo's steps

REPO = Path(__file__).resolve().parents[1]
QUICK_PHOTOS = 12


def printed_outputs(stdout: str) -> dict[str, list[Path]]:
    """The ``Outputs:`` section of the demo's summary: label -> paths (``  label: path`` lines)."""
    lines = stdout.split("\nOutputs:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    outputs: dict[str, list[Path]] = {}
    for line in lines:
        label, path = line.strip().split(": ", 1)
        outputs.setdefault(label, []).append(Path(path))
    return outputs


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``python -m demo --quick`` run once, as ``make demo`` runs it (from the repository root)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    # one torch thread: at 64 px there is little to share, and on a busy machine waiting threads cost more
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "demo", "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


def test_quick_demo_prints_every_output_and_each_exists(quick_demo):
    proc, out = quick_demo
    outputs = printed_outputs(proc.stdout)
    assert set(outputs) == {"report (open in a browser)", "scores", "scatter plot (shipped model)", "heatmaps folder",
                            "shards index", "checkpoint", "training logs (TensorBoard, metrics.csv, curves.png)",
                            "results table", "results table (markdown)", "scatter plot"}
    for label, paths in outputs.items():
        for path in paths:
            assert path.exists(), f"{label}: {path} is printed but missing"
            assert out in path.parents, f"{label}: {path} is outside --out {out}"
    for step in ("score", "annotate", "train", "test"):
        assert f"{step} done in" in proc.stdout
    assert proc.stdout.index("[1/4] score") < proc.stdout.index("[2/4] annotate"), "the result comes first"


def test_quick_demo_outputs_hold_what_they_should(quick_demo):
    proc, out = quick_demo
    outputs = printed_outputs(proc.stdout)
    index = json.loads(outputs["shards index"][0].read_text())
    assert index["count"] == QUICK_PHOTOS
    assert outputs["checkpoint"][0].suffix == ".ckpt"
    run_dir = outputs["training logs (TensorBoard, metrics.csv, curves.png)"][0]
    assert (run_dir / "metrics.csv").is_file() and list(run_dir.glob("events.out.tfevents*"))

    results = read_rows(outputs["results table"][0])
    assert [r["dataset"] for r in results] == ["clive-demo"]
    assert int(results[0]["n"]) == 3  # 12 photos split 6/3/3 in quick mode
    assert all(math.isfinite(float(results[0][m])) for m in ("plcc", "srcc", "krcc", "rmse"))
    assert f"SRCC {float(results[0]['srcc']):.3f}" in proc.stdout, "the summary prints the test metrics"

    scores = read_rows(outputs["scores"][0])
    photos = sorted(p.name for p in (out / "photos" / "images").iterdir())
    assert len(photos) == QUICK_PHOTOS
    assert sorted(Path(r["image"]).name for r in scores) == photos, "one row per scored photo"
    assert all(math.isfinite(float(r["score"])) and r["scale_dataset"] == "clive" for r in scores)
    heatmaps = sorted(outputs["heatmaps folder"][0].glob("*.png"))
    assert [p.name for p in heatmaps] == sorted(f"{p}.heatmap.png" for p in photos)  # rsfiqa score's naming
    assert {Path(r["heatmap"]) for r in scores} == set(heatmaps)


def test_quick_demo_leads_with_the_shipped_model_on_photos_it_never_saw(quick_demo):
    """Step 1 scores with the shipped model (no training) and prints its PLCC/SRCC against the MOS."""
    proc, out = quick_demo
    outputs = printed_outputs(proc.stdout)
    scores = read_rows(outputs["scores"][0])
    labels = {r["image"]: float(r["mos"]) for r in read_rows(out / "photos" / "labels.csv")}
    assert {Path(r["image"]).name: float(r["mos"]) for r in scores} == labels
    assert all(r["scale_dataset"] == "clive" for r in scores), "the shipped model's scale, not the demo's"
    from rsfiqa.inference.report import correlations
    metrics = correlations([float(r["mos"]) for r in scores], [float(r["score"]) for r in scores])
    result_line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    assert f"SRCC {metrics['srcc']:.3f}  PLCC {metrics['plcc']:.3f}" in result_line
    assert f"on {QUICK_PHOTOS} photos it never saw" in result_line
    page = outputs["report (open in a browser)"][0].read_text()
    assert page.count('class="card"') == QUICK_PHOTOS and "SRCC" in page


def test_a_failing_step_stops_the_demo_naming_it(tmp_path, monkeypatch, capsys):
    """Two labelled photos, one of them missing: scoring finds one, and the demo stops there."""
    monkeypatch.syspath_prepend(str(REPO))
    import demo
    from demo import run

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = read_rows(run.DATA / "labels.csv")[:2]
    shutil.copy2(run.DATA / "images" / rows[0]["image"], data / "images")
    with open(data / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    monkeypatch.setattr(run, "DATA", data)

    assert demo.main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "demo: error: step 1/4 (score) failed" in err and "has 1 rows for 2 photos" in err
    assert not (tmp_path / "out" / "shards").exists(), "no later step ran"
