"""``--engine ray`` (annotate/ray_engine.py) on a local 2-CPU Ray cluster with real CLIVE photos:
the shards equal the local engine's key by key, with the offline components and with the MLLM
describer on a mock backend; a killed actor process is retried and every sample is written once;
a bad image is skipped with today's reason; Ctrl-C leaves no half shard and the rerun resumes;
Ray missing or an unreachable address is one line."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray

import raycomponents
from annotate import ray_engine
from annotate.cli import main as annotate_main
from annotate.config import AnnotateError
from annotate.describe import DESCRIBERS
from annotate.pipeline import LocalEngine, annotate
from annotate.ray_engine import RayEngine
from annotate.registry import component_record
from annotate.segment import SEGMENTERS
from annotate.segment.classical import ClassicalSegmenter
from annotate.writer import completed_shards
from rsfiqa_core.tars import tar_members
from test_annotate_pipeline import config, make_tiny_dataset

pytestmark = pytest.mark.shared  # reads ../shared

REPO = Path(__file__).resolve().parents[1]
N_PHOTOS = 7
MOCK_MLLM = ("describer.name=mock_mllm",)


def members(out: Path) -> dict[str, dict[str, bytes]]:
    """Key -> {member: bytes} of the completed shards; a key stored twice fails the test."""
    found: dict[str, dict[str, bytes]] = {}
    where: dict[str, str] = {}
    for path in completed_shards(out):
        for key, ext, read in tar_members(str(path)):
            assert where.setdefault(key, path.name) == path.name, f"{key} in {where[key]} and {path.name}"
            found.setdefault(key, {})[ext] = read()
    return found


@pytest.fixture(autouse=True)
def test_components(monkeypatch):
    """The components of raycomponents.py in this process's registries (the workers register them too)."""
    monkeypatch.setitem(SEGMENTERS, raycomponents.ExitOnceSegmenter.name, raycomponents.ExitOnceSegmenter)
    monkeypatch.setitem(DESCRIBERS, raycomponents.MockMLLMDescriber.name, raycomponents.MockMLLMDescriber)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """``N_PHOTOS`` CLIVE photos (96 px) and one unreadable image listed in labels.csv."""
    root = tmp_path_factory.mktemp("ray-clive")
    labels = make_tiny_dataset(root, N_PHOTOS)
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "labels.csv").write_text("image,mos\n" + "".join(f"{k},{v}\n" for k, v in {**labels, "broken.jpg": 50}.items()))
    return root


# --------------------------------------------------------------------------- without a cluster
def test_without_ray_installed_the_cli_names_the_extra_in_one_line(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = annotate_main(["--dataset", "csv", "--root", str(photos), "--out", str(tmp_path / "out"), "--engine", "ray",
                          "--no-progress", *config_overrides()])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "pip install 'rsfiqa[ray]'" in err


def test_an_unreachable_ray_address_is_one_line(photos, tmp_path, capsys):
    assert not ray.is_initialized()
    code = annotate_main(["--dataset", "csv", "--root", str(photos), "--out", str(tmp_path / "out"), "--engine=ray",
                          "--ray-address", "127.0.0.1:1", "--no-progress", *config_overrides()])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--ray-address 127.0.0.1:1: cannot reach a Ray cluster" in err
    assert not ray.is_initialized()


def test_a_worker_whose_component_differs_from_the_drivers_is_refused():
    recorded = {"segmenter": component_record(ClassicalSegmenter(num_regions=5))}
    ray_engine.check_record("segmenter", ClassicalSegmenter(num_regions=5), recorded)
    with pytest.raises(AnnotateError, match="segmenter built on Ray node .* n_segments: 200 -> 150"):
        ray_engine.check_record("segmenter", ClassicalSegmenter(num_regions=5, n_segments=150), recorded)


def config_overrides(*extra: str) -> list[str]:
    return ["shards.maxcount=4", "batch_size=4", "dataset.mos_range=[0,100]", *extra]


# --------------------------------------------------------------------------- on a local cluster
@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs whose workers import this checkout and register raycomponents."""
    path = f"{REPO}:{REPO / 'tests'}"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
                          "worker_process_setup_hook": "raycomponents.register"})
    yield
    ray.shutdown()


def annotate_both(photos: Path, tmp_path: Path, *overrides: str, workers: int = 2):
    """The same run through the local engine and the Ray engine; (local summary, ray summary)."""
    cfg = config(*overrides)
    local = annotate("csv", photos, tmp_path / "local", cfg, progress=False, engine=LocalEngine(1))
    on_ray = annotate("csv", photos, tmp_path / "ray", cfg, progress=False, engine=RayEngine(workers=workers))
    return local, on_ray


@pytest.mark.slow
def test_ray_shards_equal_the_local_ones_and_a_bad_image_is_skipped_alike(cluster, photos, tmp_path):
    local, on_ray = annotate_both(photos, tmp_path)
    assert on_ray.engine == "ray" and on_ray.workers == 2
    assert on_ray.written == local.written == N_PHOTOS
    assert on_ray.skipped == local.skipped and [s["item"] for s in on_ray.skipped] == ["broken.jpg"]
    assert members(tmp_path / "ray") == members(tmp_path / "local")
    assert {p.name: p.read_bytes() for p in completed_shards(tmp_path / "ray")} == \
           {p.name: p.read_bytes() for p in completed_shards(tmp_path / "local")}, "preserve_order: same shards"
    assert on_ray.stage_images == local.stage_images and on_ray.index_count == N_PHOTOS


@pytest.mark.slow
def test_the_mllm_describer_on_ray_gives_the_local_records(cluster, photos, tmp_path):
    local, on_ray = annotate_both(photos, tmp_path, *MOCK_MLLM, workers=1)  # a segment and a describe pool
    found = members(tmp_path / "ray")
    assert len(found) == N_PHOTOS and found == members(tmp_path / "local")
    assert on_ray.score_sources == local.score_sources and on_ray.score_sources.get("qalign", 0) > 0


@pytest.mark.slow
def test_a_killed_actor_process_is_retried_and_every_sample_is_written_once(cluster, photos, tmp_path):
    marker = tmp_path / "killed-once"
    overrides = ("segmenter.name=exit_once", f"segmenter.marker={marker}")
    on_ray = annotate("csv", photos, tmp_path / "ray", config(*overrides), progress=False, engine=RayEngine(workers=2))
    assert marker.exists(), "an actor process exited mid-run"
    found = members(tmp_path / "ray")  # fails on a key stored twice
    assert on_ray.written == len(found) == N_PHOTOS
    local = annotate("csv", photos, tmp_path / "local", config(*overrides), progress=False)  # marker set: no exit
    assert found == members(tmp_path / "local")


@pytest.mark.slow
def test_ctrl_c_leaves_no_half_shard_and_the_next_run_resumes(cluster, photos, tmp_path, monkeypatch, capsys):
    finish, calls = ray_engine.finish, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 6:  # after one complete shard of 4 and one started
            raise KeyboardInterrupt
        finish(*args)
    monkeypatch.setattr(ray_engine, "finish", interrupted)
    argv = ["--dataset", "csv", "--root", str(photos), "--out", str(tmp_path / "out"), "--engine", "ray",
            "--workers", "2", "--no-progress", *config_overrides()]
    assert annotate_main(argv) == 130
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("annotate")]
    assert ours == ["annotate: interrupted; finished shards are kept; rerun the same command to resume"]
    assert not list((tmp_path / "out").glob("*.tmp")) and len(members(tmp_path / "out")) == 4
    monkeypatch.setattr(ray_engine, "finish", finish)
    assert annotate_main(argv) == 0
    out = capsys.readouterr().out
    assert "already done 4, written 3, skipped 1" in out and len(members(tmp_path / "out")) == N_PHOTOS
