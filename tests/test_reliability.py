"""Reliability: offline operation, resuming training, corrupt shards, MLLM backend failures and
annotator failures in the middle of an annotation run (docs/FAILURES.md).

The SIGKILL loop of the annotation stage is in tests/test_annotate_resume.py, byte-identical
annotation output in tests/test_annotate_pipeline.py and identical evaluation numbers in
tests/test_eval.py; they are not repeated here.
"""
from __future__ import annotations

import io
import json
import shutil
import socket
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import badinputs
from annotate.cli import main as annotate_main
from annotate.config import AnnotateError, load_config
from annotate.describe.mllm import MLLMDescriber
from annotate.describe.prompts import question_kinds
from annotate.pipeline import MAX_FAILURES_IN_A_ROW, annotate
from annotate.segment import build_segmenter
from annotate.segment.postprocess import postprocess
from annotate.writer import completed_shards
from conftest import NetworkBlocked
from rsfiqa import cli
from rsfiqa_core import contract
from rsfiqa.data.datamodule import ShardDataModule
from rsfiqa.data.shards import load_shard_set
from rsfiqa_core.contract import ShardError
from test_annotate_pipeline import read_samples

L = 5
DIMS = contract.DIMENSIONS


# --------------------------------------------------------------------------- offline
def test_the_suite_runs_offline():
    import os

    from huggingface_hub import constants

    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert constants.HF_HUB_OFFLINE, "set before huggingface_hub was imported"
    for address in (("203.0.113.7", 443), ("2001:db8::1", 443), ("huggingface.co", 443)):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(NetworkBlocked, match="offline"):
            sock.connect(address)
    with socket.create_server(("127.0.0.1", 0)) as server:  # loopback stays usable (DDP's gloo store)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass


# --------------------------------------------------------------------------- resuming training
def train_keys_per_epoch(shards: Path, start_epoch: int, epochs: int, num_workers: int = 0) -> list[list[str]]:
    dm = ShardDataModule(train_shards=str(shards), image_size=16, batch_size=4, shuffle_buffer=8,
                         num_workers=num_workers)
    dm.trainer = type("FakeTrainer", (), {"world_size": 1, "global_rank": 0, "current_epoch": start_epoch})()
    dm.setup("fit")
    loader = dm.train_dataloader()
    return [[k for batch in loader for k in batch["key"]] for _ in range(epochs)]


def test_a_resumed_loader_continues_the_uninterrupted_data_order(synth_shards):
    """Shard order, shuffle buffer and flips of epoch e depend on (seed, e) only, not on how many
    epochs this loader has run (webdataset's detshuffle counts its own passes)."""
    straight = train_keys_per_epoch(synth_shards, 0, 3)
    assert straight[0] != straight[1] != straight[2], "each epoch has its own order"
    assert train_keys_per_epoch(synth_shards, 2, 1) == straight[2:]
    assert train_keys_per_epoch(synth_shards, 1, 2, num_workers=2) == train_keys_per_epoch(synth_shards, 0, 3,
                                                                                          num_workers=2)[1:]


def fit(workdir: Path, args: list[str]):
    workdir.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["rsfiqa"])
        return cli.main(["fit", *args])


@pytest.fixture(scope="module")
def interrupted_and_straight(synth_shards, tiny_model_args, tmp_path_factory):
    """Run A: 4 epochs straight. Run B: 2 epochs, then ``--ckpt_path`` with max_epochs 4 (a new
    process would do the same: every run starts from the CLI's seed 0). Returns (A, B, B's first
    run directory). B's best-checkpoint callback monitors ``epoch`` (mode min), so its best stays
    epoch 0: a ``last.ckpt`` that follows the best instead of the last epoch shows."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("resume")
    common = ["--data.train_shards", str(synth_shards), "--data.image_size", "32", "--data.batch_size", "5",
              *tiny_model_args, "--model.lr", "1e-3", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    run_a = fit(tmp / "a", [*common, "--trainer.max_epochs", "4"])
    fit(tmp / "b", [*common, "--trainer.max_epochs", "2", "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min"])
    first = tmp / "b" / "runs" / "rsfiqa" / "version_0"
    run_b = fit(tmp / "b", [*common, "--trainer.max_epochs", "4", "--ckpt_path", str(first / "checkpoints" /
                                                                                     "last.ckpt")])
    return run_a, run_b, first


@pytest.mark.slow
def test_fit_resumed_from_a_checkpoint_matches_an_uninterrupted_fit(interrupted_and_straight):
    """Same seed, CPU: validation metrics and weights agree to float rounding (tolerance 1e-5)."""
    run_a, run_b, _ = interrupted_and_straight
    metrics = {name: (float(run_a.trainer.callback_metrics[name]), float(run_b.trainer.callback_metrics[name]))
               for name in ("val/srcc", "val/plcc", "val/loss", "train/loss")}
    print("uninterrupted / resumed:", {k: f"{a:.6f} / {b:.6f}" for k, (a, b) in metrics.items()})
    assert run_a.trainer.current_epoch == run_b.trainer.current_epoch == 4
    for name, (a, b) in metrics.items():
        assert a == pytest.approx(b, abs=1e-5), name
    weights_a, weights_b = run_a.model.state_dict(), run_b.model.state_dict()
    assert weights_a.keys() == weights_b.keys()
    worst = max(float((weights_a[k].float() - weights_b[k].float()).abs().max()) for k in weights_a)
    assert worst < 1e-5, f"largest weight difference {worst}"


@pytest.mark.slow
def test_last_ckpt_is_the_last_epoch(interrupted_and_straight):
    _, _, first_run = interrupted_and_straight
    last = torch.load(first_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1, f"last.ckpt holds epoch {last['epoch']} of a 2-epoch run"


# --------------------------------------------------------------------------- corrupt shards
def replace_member(shard: Path, suffix: str, payload: bytes) -> str:
    """Rewrite ``shard`` with the first member ending in ``suffix`` replaced by ``payload``; its key."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    target = next(m for m, _ in members if m.name.endswith(suffix))
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = payload if member is target else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return target.name.split(".", 1)[0]


def keys_of(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


@pytest.fixture
def shard_copy(synth_shards, tmp_path) -> Path:
    return Path(shutil.copytree(synth_shards, tmp_path / "copy"))


def test_garbage_shard_is_named_at_setup_and_at_read_time(shard_copy):
    victim = shard_copy / "synth-000002.tar"
    dm = ShardDataModule(train_shards=str(shard_copy), image_size=16, batch_size=4)
    dm.setup("predict")
    loader = dm.predict_dataloader()
    victim.write_bytes(np.random.default_rng(0).bytes(victim.stat().st_size))  # replaced after setup
    with pytest.raises(ShardError, match=f"^{victim}: corrupt or truncated shard"):
        keys_of(loader)
    with pytest.raises(ShardError, match=f"^{victim}: corrupt or truncated shard"):
        load_shard_set(str(shard_copy))


def test_corrupt_json_record_is_named_with_its_sample(shard_copy):
    victim = shard_copy / "synth-000001.tar"
    dm = ShardDataModule(train_shards=str(shard_copy), image_size=16, batch_size=4)
    dm.setup("predict")
    loader = dm.predict_dataloader()
    key = replace_member(victim, ".json", b'{"dataset": "synth", "mos": 3.')
    with pytest.raises(contract.ContractError, match=f"{victim}:{key}: unreadable json"):
        keys_of(loader)
    with pytest.raises(ShardError, match=f"^{victim}:{key}: unreadable JSON record"):
        load_shard_set(str(shard_copy))


def test_undecodable_image_in_a_shard_is_named_with_its_sample(shard_copy):
    victim = shard_copy / "synth-000000.tar"
    key = replace_member(victim, ".jpg", badinputs.truncated_jpeg())
    # the record's checksum would name the change first (tests/test_bad_runs.py); without one, as in
    # shards written before checksums existed, the decoder names it
    with tarfile.open(victim) as tar:
        record = json.loads(tar.extractfile(f"{key}.json").read())
    record.pop(contract.CHECKSUMS_KEY)
    replace_member(victim, f"{key}.json", json.dumps(record).encode())
    dm = ShardDataModule(train_shards=str(shard_copy), image_size=16, batch_size=4)
    dm.setup("predict")  # the scan reads records only; the image is decoded when it is read
    with pytest.raises(ValueError, match=f"{victim}:{key}: broken image data"):
        keys_of(dm.predict_dataloader())


# --------------------------------------------------------------------------- MLLM backend failures
class ScriptedBackend:
    """A Backend whose answers come from ``answer(kind, dim, call)`` and whose slot log-probs come
    from ``logprobs(call)`` (level words and digits alike); either may raise. Counts calls."""

    def __init__(self, answer: Callable[[str, str | None, int], str], logprobs: Callable[[int], Any] = None):
        self.answer, self.logprobs = answer, logprobs or (lambda call: {w: -float(i) for i, w in enumerate(
            (*contract.LEVELS, *"12345"))})
        self.generate_calls = self.logprob_calls = 0

    def generate(self, conversations, max_tokens, sample_seed=None):
        self.generate_calls += 1
        return [self.answer(*question_kinds()[len(c) // 2], self.generate_calls) for c in conversations]

    def slot_problem(self, kind):
        return None

    def slot_logprobs(self, conversations, kind):
        self.logprob_calls += 1
        result = self.logprobs(self.logprob_calls)
        return [result] * len(conversations)

    def config(self):
        return {}

    def provenance(self):
        return {"backend": "scripted"}


def good_answer(kind: str, dim: str | None, call: int) -> str:
    return {"content": "a yellow square", "level": f"From the {dim} dimension, the image quality level is good.",
            "score": f"From the {dim} dimension, the image quality score is 4."}[kind]


def describe_one(backend: ScriptedBackend, max_retries: int = 2) -> list[dict]:
    image = badinputs._scene()
    mask = np.zeros(image.shape[:2], bool)
    mask[:, :20] = True
    seg = postprocess([mask], [0.9], num_regions=3)  # region 0, an empty region 1, background 2
    return MLLMDescriber(backend, max_retries=max_retries, image_long_side=56).describe([image], [seg])[0]


def test_a_backend_timeout_is_retried_and_then_succeeds():
    def answer(kind, dim, call):
        if call == 1:
            raise TimeoutError("no answer within 60 s")
        return good_answer(kind, dim, call)
    backend = ScriptedBackend(answer)
    regions = describe_one(backend)
    assert backend.generate_calls == 1 + len(question_kinds())  # one retry, then every turn once
    for r in (regions[0], regions[2]):
        assert "missing_reason" not in r and r["content"] == "a yellow square"
        assert r["levels"] == dict.fromkeys(DIMS, "good") and r["parsed_scores"] == dict.fromkeys(DIMS, 4.0)


def test_a_backend_that_keeps_failing_leaves_descriptions_missing_with_the_reason():
    def answer(kind, dim, call):
        raise ConnectionError("model server went away")
    def logprobs(call):
        raise TimeoutError("logprobs timed out")
    regions = describe_one(ScriptedBackend(answer, logprobs), max_retries=1)
    assert regions[1]["missing_reason"] == "empty region"
    for r in (regions[0], regions[2]):
        assert (r["content"], r["levels"], r["scores"], r["parsed_scores"]) == (None, None, None, None)
        reason = "backend error: ConnectionError: model server went away (after 2 attempts)"
        assert r["missing_reason"].count(reason) == len(question_kinds())
        for kind in ("level", "score"):
            assert all(f"{kind} log-probabilities/{d}: backend error: TimeoutError: logprobs timed out "
                       "(after 2 attempts)" in r["missing_reason"] for d in DIMS)
        assert contract.region_text(r) == "", "the data module masks the region (one rule)"


@pytest.mark.parametrize("bad, fragment", [
    ("", "no level word"),                                                   # empty answer
    ("The quality is hard to judge.", "no level word"),                      # malformed
    ("From the blur dimension, the image quality level is mediocre.", "off-vocabulary level 'mediocre'"),
])
def test_unusable_level_answers_are_retried_then_missing_and_qalign_still_scores(bad, fragment):
    backend = ScriptedBackend(lambda kind, dim, call: bad if kind == "level" else good_answer(kind, dim, call))
    region = describe_one(backend)[0]
    retries = 2 * len(DIMS)  # two seeded re-samples per level turn
    assert backend.generate_calls == len(question_kinds()) + retries
    assert region["levels"] is None and region["content"] == "a yellow square"
    for d in DIMS:
        assert f"level/{d}: {fragment}" in region["missing_reason"]
    assert region["missing_reason"].count("(after 3 attempts)") == len(DIMS)
    assert region["score_source"] == dict.fromkeys(DIMS, "qalign")  # the log-probs still give the score


def test_labels_absent_from_the_logprobs_leave_the_value_missing_never_the_parsed_score():
    partial = {w: -1.0 for w in (*contract.LEVELS, *"12345") if w not in ("excellent", "5")}  # outside a top-k
    region = describe_one(ScriptedBackend(good_answer, lambda call: partial))[0]
    assert region["scores"] is None and region["score_source"] == dict.fromkeys(DIMS)
    assert region["level_expectations"] is None
    assert region["parsed_scores"] == dict.fromkeys(DIMS, 4.0) and region["levels"] == dict.fromkeys(DIMS, "good")
    for d in DIMS:
        assert f"score log-probabilities/{d}: score digits ['5'] absent from the returned" in region["missing_reason"]
        assert f"level log-probabilities/{d}: level words ['excellent'] absent" in region["missing_reason"]


def test_without_logprobs_every_score_is_the_parsed_answer():
    backend = ScriptedBackend(good_answer)
    image = badinputs._scene()
    seg = postprocess([np.ones(image.shape[:2], bool)], [0.9], num_regions=2)
    region = MLLMDescriber(backend, use_logprobs=False, image_long_side=56).describe([image], [seg])[0][0]
    assert backend.logprob_calls == 0
    assert region["scores"] == dict.fromkeys(DIMS, 4.0) and region["score_source"] == dict.fromkeys(DIMS, "parsed")
    assert region["level_expectations"] is None and "missing_reason" not in region


def test_a_backend_returning_too_few_answers_is_a_backend_error():
    class Short(ScriptedBackend):
        def generate(self, conversations, max_tokens, sample_seed=None):
            return super().generate(conversations, max_tokens, sample_seed)[:-1]
    region = describe_one(Short(good_answer), max_retries=0)[0]
    assert "content: backend error: 1 results for 2 conversations (after 1 attempts)" in region["missing_reason"]


# --------------------------------------------------------------------------- annotator failures mid-run
class FailingSegmenter:
    """The real classical segmenter, except that images for which ``fails(image)`` holds raise."""

    def __init__(self, fails: Callable[[np.ndarray], bool]):
        self.inner, self.fails = build_segmenter({"name": "classical", "num_regions": L}), fails
        self.num_regions = L

    def segment(self, image):
        if self.fails(image):
            raise RuntimeError(f"cannot segment a {image.shape[1]}x{image.shape[0]} image")
        return self.inner.segment(image)

    name, uses_device = "classical", False

    def config(self):
        return self.inner.config()

    def provenance(self):
        return self.inner.provenance()


OVERRIDES = ["shards.maxcount=3", "batch_size=4", "dataset.mos_range=[0,100]"]


def test_an_image_that_breaks_the_segmenter_is_skipped_and_the_batch_goes_on(tmp_path, monkeypatch):
    kinds = [k for k in badinputs.image_kinds() if k.kind == "one_pixel"]
    badinputs.write_csv_dataset(tmp_path / "data", kinds, good=3)
    monkeypatch.setattr("annotate.pipeline.build_segmenter",
                        lambda cfg: FailingSegmenter(lambda image: image.shape[:2] == (1, 1)))
    summary = annotate("csv", tmp_path / "data", tmp_path / "out", load_config(None, OVERRIDES), progress=False)
    written = sorted(s["record"]["image"] for s in read_samples(tmp_path / "out"))
    assert summary.written == 3 and written == ["good_0.jpg", "good_1.jpg", "good_2.jpg"]
    assert summary.skipped == [{"item": "dot.png", "stage": "segment",
                                "reason": "segment failed (RuntimeError: cannot segment a 1x1 image)"}]


def test_a_dead_describer_backend_leaves_regions_missing_but_the_run_completes(tmp_path, monkeypatch):
    badinputs.write_csv_dataset(tmp_path / "data", [], good=3)

    def answer(kind, dim, call):
        raise TimeoutError("backend timed out")
    monkeypatch.setattr("annotate.pipeline.build_describer",
                        lambda cfg: MLLMDescriber(ScriptedBackend(answer), max_retries=1, image_long_side=56))
    summary = annotate("csv", tmp_path / "data", tmp_path / "out", load_config(None, OVERRIDES), progress=False)
    assert summary.written == 3 and summary.skipped == []
    reasons = summary.missing_descriptions
    assert sum(n for r, n in reasons.items() if "backend error: TimeoutError: backend timed out" in r) >= 3
    dm = ShardDataModule(train_shards=str(tmp_path / "out"), image_size=16, batch_size=4, text_parts=["content"])
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert sum(len(b["key"]) for b in batches) == 3
    assert not any(b["region_valid"].any() for b in batches), "no content anywhere: every region masked"


def test_many_failures_in_a_row_stop_the_run_with_one_clear_line(tmp_path, monkeypatch, capsys):
    badinputs.write_csv_dataset(tmp_path / "data", [], good=MAX_FAILURES_IN_A_ROW + 2)
    monkeypatch.setattr("annotate.pipeline.build_segmenter", lambda cfg: FailingSegmenter(lambda image: True))
    with pytest.raises(AnnotateError, match=f"{MAX_FAILURES_IN_A_ROW} images in a row failed in the segment stage"):
        annotate("csv", tmp_path / "data", tmp_path / "out", load_config(None, OVERRIDES), progress=False)
    assert not list((tmp_path / "out").glob("*.tmp")) and not completed_shards(tmp_path / "out")
    code = annotate_main(["--dataset", "csv", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                          "--no-progress", *OVERRIDES])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "RuntimeError: cannot segment a 56x40 image" in err
