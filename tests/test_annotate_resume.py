"""Kill test: ``python -m annotate`` SIGKILLed at random points, then resumed to completion.

Each killed run is stopped after it has started writing: once it has a ``.tar.tmp`` open, or just
after it completed a shard (the order shuffled with a fixed seed), plus a seeded random delay.
The kill points are events, not absolute times, so the test behaves alike on fast and slow
machines. After every kill the completed shards must all be readable with no key twice; after
the final run the shards hold exactly the dataset, byte for byte as one uninterrupted run
writes them.
"""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from pathlib import Path
from typing import Callable

from annotate.config import load_config
from annotate.pipeline import annotate
from annotate.writer import completed_shards, shard_keys
from rsfiqa_core.contract import read_index, sample_key
from test_annotate_pipeline import make_tiny_dataset, tar_bytes

pytestmark = pytest.mark.shared  # reads ../shared

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 24
MAXCOUNT = 3
KILLS = 5


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``condition`` every 5 ms; fail if the process ends first or it takes too long."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"annotate finished (exit {proc.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "annotate did not start writing in time"
        time.sleep(0.005)


def stored_keys(out: Path) -> list[str]:
    """Keys of all completed shards, after reading every member of every tar completely."""
    keys = []
    for path in completed_shards(out):
        with tarfile.open(path) as tar:
            for member in tar:
                assert len(tar.extractfile(member).read()) == member.size
        keys += shard_keys(path)
    return keys


@pytest.mark.slow
def test_sigkilled_runs_resume_to_exactly_the_full_key_set(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    expected = {sample_key("csv", name) for name in make_tiny_dataset(root, N_IMAGES)}
    overrides = [f"shards.maxcount={MAXCOUNT}", "batch_size=2", "dataset.mos_range=[0,100]"]
    cmd = [sys.executable, "-m", "annotate", "--dataset", "csv", "--root", str(root), "--out", str(out),
           "--no-progress", *overrides]
    rng = random.Random(0)
    runs, kill_points, found_after_kill = 0, [], []
    points = ["shard open"] * (KILLS // 2) + ["shard done"] * (KILLS - KILLS // 2)
    rng.shuffle(points)
    for point in points:
        before = len(completed_shards(out)) if out.exists() else 0
        # kill while a shard is open, or just after this run completed a shard; then a random delay
        delay = rng.uniform(0.0, 0.05)
        launched = time.time()
        started = ((lambda: out.exists() and any(p.stat().st_mtime > launched for p in out.glob("*.tar.tmp")))
                   if point == "shard open" else (lambda: out.exists() and len(completed_shards(out)) > before))
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs += 1
        wait_for(started, proc)
        time.sleep(delay)
        assert proc.poll() is None, "annotate finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        keys = stored_keys(out)
        assert len(keys) == len(set(keys)) and set(keys) <= expected
        kill_points.append(f"{point}+{delay * 1000:.0f}ms")
        found_after_kill.append(len(keys))

    final = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    runs += 1
    assert final.returncode == 0, final.stderr
    keys = stored_keys(out)
    duplicates = len(keys) - len(set(keys))
    print(f"runs {runs}, killed at {kill_points}, keys stored after each kill {found_after_kill}; "
          f"keys expected {len(expected)}, keys found {len(set(keys))}, duplicates {duplicates}")
    assert runs == KILLS + 1 and duplicates == 0 and set(keys) == expected
    index = read_index(out)
    assert index["count"] == N_IMAGES and not [s for s in index["shards"] if not s.endswith(".tar")]
    assert not list(out.glob("*.tmp"))
    # resuming redoes the unfinished shard with the same samples: same bytes as one uninterrupted run
    annotate("csv", root, tmp_path / "uninterrupted", load_config(None, overrides), progress=False)
    assert tar_bytes(out) == tar_bytes(tmp_path / "uninterrupted")
