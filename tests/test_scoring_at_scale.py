"""Scoring at scale (issue 22): the output formats, resuming an ``--out``, its lock, and
``rsfiqa score --engine ray`` on a local Ray cluster against the local scorer on real CLIVE photos."""
from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsfiqa.inference import score_cli
from rsfiqa.inference.outputs import (CSV_COLUMNS, JOURNAL_SUFFIX, open_output, output_columns, output_format,
                                     state_path)
from rsfiqa.inference.scorer import ScoringSetupError

CLIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clive-dev" / "images"
PHOTOS = ("1001.JPG", "1002.JPG", "1003.JPG", "1004.JPG")
SETTINGS = {"model": "m", "model_sha256": "0" * 64, "columns": list(CSV_COLUMNS)}


def record(i: int) -> dict:
    regions = [{"index": 0, "valid": True, "content": f"region «{i}», \"quoted\"\nline", "scores": {"overall": 3.5}}]
    return {"image": f"photos/p{i}.jpg", "score": 10.0 + i / 3, "score_norm": 0.1 + i / 7, "scale_dataset": "clive",
            "regions": regions, "error": None}


def write(path: Path, records: list[dict], settings: dict = SETTINGS, close: bool = True) -> set[str]:
    """Open ``path`` as ``rsfiqa score`` does, write ``records``; the images it already held."""
    with open_output(str(path), CSV_COLUMNS, settings) as output:
        for r in records:
            output.write(r)
        if close:
            output.close()
    return output.done


def images_in(path: Path) -> list[str]:
    """The ``image`` of every entry of an output file, in file order (the file must parse whole)."""
    if path.suffix == ".csv":
        return [row["image"] for row in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))]
    if path.suffix == ".jsonl":
        return [json.loads(line)["image"] for line in path.read_text(encoding="utf-8").splitlines()]
    if path.suffix == ".json":
        return [r["image"] for r in json.loads(path.read_text(encoding="utf-8"))]
    import pyarrow.parquet as pq
    return pq.read_table(path).column("image").to_pylist()


# --------------------------------------------------------------------------- outputs: resume, lock, formats
@pytest.mark.parametrize("fmt", [".csv", ".jsonl", ".json"])
def test_resume_after_a_truncated_last_entry_keeps_each_image_once(tmp_path, fmt):
    out = tmp_path / f"scores{fmt}"
    assert write(out, [record(0), record(1), record(2)]) == set()
    data = out.read_bytes()
    out.write_bytes(data[:len(data) - (25 if fmt == ".json" else 12)])  # a killed run: record 2 cut short
    assert write(out, [record(2), record(3)]) == {"photos/p0.jpg", "photos/p1.jpg"}
    assert images_in(out) == [f"photos/p{i}.jpg" for i in range(4)]
    assert write(out, []) == {f"photos/p{i}.jpg" for i in range(4)}  # a rerun: everything is in it


def test_parquet_round_trip_and_the_journal_of_a_killed_run(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "scores.parquet"
    write(out, [record(0)])
    write(out, [record(1), record(2)], close=False)  # killed: rows in the journal, Parquet file not rewritten
    journal = Path(str(out) + JOURNAL_SUFFIX)
    with open(journal, "a", encoding="utf-8") as f:
        f.write('{"image": "photos/p9.jpg", "sco')  # and a row cut short
    assert images_in(out) == ["photos/p0.jpg"]
    assert write(out, [record(3)]) == {"photos/p0.jpg", "photos/p1.jpg", "photos/p2.jpg"}
    assert not journal.exists()
    csv_out = tmp_path / "scores.csv"
    write(csv_out, [record(i) for i in range(4)])
    table = pq.read_table(out)
    assert [str(t) for t in table.schema.types] == ["string", "double", "double", "string", "string"]
    rows = [{k: "" if v is None else str(v) for k, v in row.items()} for row in table.to_pylist()]
    assert rows == list(csv.DictReader(io.StringIO(csv_out.read_text(encoding="utf-8"), newline="")))
    assert [json.loads(r["regions"]) for r in table.to_pylist()] == [record(i)["regions"] for i in range(4)]


def test_a_changed_model_or_settings_is_refused_and_a_foreign_file_is_not_overwritten(tmp_path):
    ckpts = [tmp_path / "a.ckpt", tmp_path / "b.ckpt"]
    for i, ckpt in enumerate(ckpts):
        ckpt.write_bytes(bytes([i]) * 100)  # two models: the settings hold the file's SHA-256
    settings = [score_cli.run_settings(Namespace(ckpt=str(c), model=None, segmenter_override=[],
                                                 describer_override=[], attn_token=None), CSV_COLUMNS) for c in ckpts]
    out = tmp_path / "s.csv"
    write(out, [record(0)], settings[0])
    with pytest.raises(ScoringSetupError, match=r"written with other settings \(model: .*model_sha256: "):
        write(out, [record(1)], settings[1])
    with pytest.raises(ScoringSetupError, match="other settings"):
        write(out, [record(1)], {**settings[0], "columns": list(output_columns(mos=True, heatmaps=False))})
    assert images_in(out) == ["photos/p0.jpg"]  # nothing mixed in
    foreign = tmp_path / "mine.csv"
    foreign.write_text("my own table\n")
    with pytest.raises(ScoringSetupError, match="not written by `rsfiqa score`"):
        write(foreign, [record(0)])
    assert foreign.read_text() == "my own table\n" and not state_path(foreign).exists()


def test_a_second_writer_of_the_same_out_is_refused_by_the_lock(tmp_path):
    out = tmp_path / "s.jsonl"
    with open_output(str(out), CSV_COLUMNS, SETTINGS) as first:
        first.write(record(0))
        with pytest.raises(ScoringSetupError, match=r"another `rsfiqa score` is writing it \(it holds the lock on "):
            write(out, [record(1)])
        first.close()
    assert write(out, [record(1)]) == {"photos/p0.jpg"}  # released when the first run ends


def test_parquet_without_pyarrow_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ScoringSetupError, match=r"^--out s.parquet: Parquet output needs pyarrow: pip install pyarrow"):
        output_format("s.parquet")


def test_ray_not_installed_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    status = score_cli.main([str(tmp_path), "--engine", "ray"])
    assert status == 1
    assert capsys.readouterr().err.splitlines() == [
        "rsfiqa score: error: --engine ray needs Ray Data, which is not installed: pip install 'rsfiqa[ray]'"]


# --------------------------------------------------------------------------- the shipped model on real photos
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clive")
    for name in PHOTOS:
        shutil.copy(CLIVE / name, folder / name)
    return folder


def score(capsys, *args) -> tuple[int, list[str]]:
    status = score_cli.main([*map(str, args), "--no-progress", "--device", "cpu"])
    return status, capsys.readouterr().err.splitlines()


@pytest.mark.shared
def test_unreachable_ray_address_is_one_line(photos, tmp_path, capsys):
    pytest.importorskip("ray")
    status, err = score(capsys, photos / PHOTOS[0], "--engine", "ray", "--ray-address", "127.0.0.1:1",
                        "--out", tmp_path / "s.csv")
    assert status == 1 and err[-1] == ("rsfiqa score: error: --ray-address 127.0.0.1:1: cannot connect (127.0.0.1:1: "
                                       "Connection refused); start the cluster with `ray start --head` and give the "
                                       "address of its head node")


@pytest.mark.shared
def test_a_concurrent_run_on_the_same_out_is_refused(photos, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert score(capsys, photos / PHOTOS[0], "--out", out, "--workers", "0")[0] == 0
    settings = json.loads(state_path(out).read_text())["settings"]
    with open_output(str(out), settings["columns"], settings):  # another run holds the lock
        status, err = score(capsys, photos / PHOTOS[1], "--out", out, "--workers", "0")
    assert status == 1 and err[-1] == (f"rsfiqa score: error: --out {out}: another `rsfiqa score` is writing it (it "
                                       f"holds the lock on {state_path(out)}); wait for it to end or choose another "
                                       f"--out")
    assert images_in(out) == [str(photos / PHOTOS[0])]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for this module (``address="local"``: never another session's)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.shared
@pytest.mark.slow
def test_ray_engine_gives_the_local_records_and_a_rerun_scores_nothing(ray_cluster, photos, tmp_path, capsys,
                                                                        monkeypatch):
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert score(capsys, photos, "--out", local, "--workers", "0", "--regions")[0] == 0  # the report's regions
    status, err = score(capsys, photos, "--out", on_ray, "--engine", "ray", "--workers", "2", "--batch-size", "2",
                        "--report", tmp_path / "report.html")
    assert status == 0, err
    expected = {r["image"]: r for r in map(json.loads, local.read_text().splitlines())}
    got = {r["image"]: r for r in map(json.loads, on_ray.read_text().splitlines())}
    assert sorted(got) == sorted(expected) == sorted(str(photos / n) for n in PHOTOS)
    for image, r in got.items():  # other batches: scores equal up to float rounding, all else exactly
        assert r["score"] == pytest.approx(expected[image]["score"], rel=1e-6, abs=1e-6)
        assert {k: v for k, v in r.items() if not k.startswith("score")} == \
               {k: v for k, v in expected[image].items() if not k.startswith("score")}
    page = (tmp_path / "report.html").read_text()
    assert page.count('class="card"') == len(PHOTOS) and len(list((tmp_path / "report_files").glob("*.jpg"))) == 8

    def no_scoring(spec, files, *args, **kwargs):
        assert not files, f"scored again: {files}"
        return iter(())

    monkeypatch.setattr(score_cli, "iter_scored_on_ray", no_scoring)
    before = on_ray.read_bytes()
    status, err = score(capsys, photos, "--out", on_ray, "--engine", "ray", "--workers", "2", "--regions")
    assert status == 0 and err[-1] == (f"rsfiqa score: continuing {on_ray}: 4 of the 4 images are in it already, "
                                       f"scoring the other 0")
    assert on_ray.read_bytes() == before


@pytest.mark.shared
@pytest.mark.slow
def test_ray_engine_writes_parquet_and_reports_a_bad_image(ray_cluster, photos, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    shutil.copytree(photos, tmp_path / "p")
    (tmp_path / "p" / "broken.jpg").write_bytes((photos / PHOTOS[0]).read_bytes()[:300])
    out = tmp_path / "s.parquet"
    status, err = score(capsys, tmp_path / "p", "--out", out, "--engine", "ray", "--workers", "2", "--regions")
    assert status == 2 and [line for line in err if "error:" in line][0].startswith(
        f"rsfiqa score: error: {tmp_path / 'p' / 'broken.jpg'}: ")
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["image"] for r in rows) == sorted(str(tmp_path / "p" / n) for n in PHOTOS)
    assert all(isinstance(r["score"], float) and json.loads(r["regions"]) for r in rows)
