"""Runs that go wrong, round 3 (``badinputs.round3_kinds``, docs/FAILURES.md "Stored bytes, labels and
degenerate data"): every stored byte that feeds a score is verified, ``--labels`` is matched exactly,
outputs never clobber the label file or score old heatmaps, removed inputs stay removed, degenerate
data and settings are one line before any work, workers are bounded and interrupts quiet.
One ``test_<kind>`` per kind; everything runs in-process on tiny inputs."""
from __future__ import annotations

import builtins
import errno
import gc
import json
import logging
import signal
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
import webdataset as wds

import badinputs
from annotate import cli as annotate_cli
from annotate import parallel, writer
from annotate.api import Annotator
from annotate.config import AnnotateError, load_config
from annotate.describe.measures import MeasuresDescriber
from annotate.pipeline import annotate
from annotate.segment.classical import ClassicalSegmenter
from rsfiqa import cli
from rsfiqa.data.datamodule import ShardDataModule
from rsfiqa.inference import pretrained
from rsfiqa.checkpoint import CheckpointError, read_checkpoint_file
from rsfiqa.inference.scorer import Scorer, ScoringSetupError
from rsfiqa.model.feature_cache import CacheEntryError, DiskCache
from rsfiqa.module import finite_rows
from rsfiqa_core import contract
from rsfiqa_core.digests import state_digest
from rsfiqa_core.usererrors import one_line
from test_bad_runs import (OVERRIDES, csv_rows, errors, fit, fit_args, interrupt_scoring_after, photos,  # noqa: F401
                           run_annotate, score, set_labels)
from test_bad_runs import dataset, shipped_scorer, tiny_checkpoint  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
KINDS = badinputs.round3_kinds()
SHIPPED = pretrained.model_entry(pretrained.DEFAULT_MODEL)


def test_every_round3_kind_is_documented_and_tested():
    table = (REPO / "docs" / "FAILURES.md").read_text()
    documented = {k.kind for k in KINDS if f"| `{k.kind}` |" in table}
    assert documented == {k.kind for k in KINDS}, sorted({k.kind for k in KINDS} - documented)
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    assert {k.kind for k in KINDS} <= tested, sorted({k.kind for k in KINDS} - tested)


# --------------------------------------------------------------------------- stored bytes verified
def tampered_copy(tmp_path: Path, change) -> Path:
    """The shipped file with ``change(content)`` applied and its digest left as it was."""
    content = torch.load(SHIPPED.path, map_location="cpu", weights_only=True)
    change(content)
    path = tmp_path / "tampered.pt"
    torch.save(content, path)
    return path


def flip_bits(content: dict) -> None:
    weight = content["trained"]["head.ridge_weight"]
    weight.view(torch.int32)[:4] ^= 0x00400000  # a few flipped exponent bits: finite, but other numbers


def write_nan(content: dict) -> None:
    content["trained"]["head.members.0.1.weight"][0, 0] = float("nan")


def edit_hyper_parameter(content: dict) -> None:
    content["hyper_parameters"]["net"]["embed_dim"] = 64


@pytest.mark.parametrize("change", [flip_bits, write_nan, edit_hyper_parameter, lambda c: c.pop("digest")],
                         ids=["flipped_bits", "nan_weight", "edited_hyper_parameter", "no_digest"])
def test_shipped_model_tampered(change, tmp_path):
    path = tampered_copy(tmp_path, change)
    with pytest.raises(pretrained.PretrainedError) as err:
        Scorer.from_model_file(path, "cpu")
    assert str(err.value).startswith(f"{path}: its trained weights or settings do not match the digest")
    assert "\n" not in str(err.value)
    assert pretrained.read_model_file(SHIPPED.path, SHIPPED.name)["digest"], "the shipped file itself is intact"


def test_non_finite_prediction(score, shipped_scorer, tmp_path, monkeypatch):
    photos(tmp_path / "p", ("a.jpg", "b.png"))
    real = shipped_scorer.net.forward_features

    def first_nan(*args, **kwargs):
        out = real(*args, **kwargs)
        out["score"] = out["score"].clone()
        out["score"][0] = float("nan")
        return out

    monkeypatch.setattr(shipped_scorer.net, "forward_features", first_nan)
    status, err = score(tmp_path / "p", "--out", tmp_path / "s.csv", "--batch-size", "2")
    rows = csv_rows(tmp_path / "s.csv")
    assert status == 2 and [Path(r).name for r in rows] == ["b.png"]
    assert errors(err) == [f"rsfiqa score: error: {tmp_path / 'p' / 'a.jpg'}: the model predicted nan (not a finite "
                           f"number; its weights or this image's features hold NaN/inf); no score written"]


def test_checkpoint_tampered(tiny_checkpoint, tmp_path):
    ckpt = read_checkpoint_file(tiny_checkpoint)
    assert ckpt["state_digest"] == state_digest(ckpt["state_dict"]), "rsfiqa fit stores the digest"
    name = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][name].view(-1)[0] += 1e-3
    torch.save(ckpt, tmp_path / "changed.ckpt")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'changed.ckpt'}: its weights do not match the digest"):
        read_checkpoint_file(tmp_path / "changed.ckpt")
    with pytest.raises(ScoringSetupError, match="its weights do not match the digest"):
        Scorer.from_checkpoint(tmp_path / "changed.ckpt", "cpu")
    del ckpt["state_digest"]  # written before the digest existed: loads unverified
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert read_checkpoint_file(tmp_path / "old.ckpt")["state_dict"][name].shape == ckpt["state_dict"][name].shape


def small_cache(tmp_path: Path) -> tuple[DiskCache, Path]:
    """A cache of a tiny linear module holding one entry; (cache, the entry's file)."""
    cache = DiskCache(tmp_path / "cache", torch.nn.Linear(2, 2), "test", "float32", torch.float32)
    cache.lookup(["ab" * 20], lambda missing: [torch.arange(6.0).reshape(1, 6)])
    return cache, cache.path("ab" * 20)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), "cannot be read"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "cannot be read"),
    (lambda p: p.write_bytes(flip_last_tensor_byte(p.read_bytes())), "does not match its digest"),
], ids=["empty", "truncated", "bit_flipped"])
def test_feature_cache_entry_damaged(damage, message, tmp_path):
    cache, entry = small_cache(tmp_path)
    assert torch.equal(cache.load("ab" * 20)[0], torch.arange(6.0)), "intact: read back"
    damage(entry)
    with pytest.raises(CacheEntryError) as err:
        cache.load("ab" * 20)
    assert str(err.value).startswith(f"cache entry {entry} ") and message in str(err.value)
    assert "delete it" in str(err.value)
    assert CacheEntryError in cli.EXPECTED_ERRORS, "rsfiqa fit/test: one line"


def flip_last_tensor_byte(data: bytes) -> bytes:
    """Flip a bit of the float 5.0 (the last stored value) inside the zip's tensor data."""
    at = data.rindex(torch.tensor([5.0]).numpy().tobytes())
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_non_finite_features():
    batch = {"dataset": ["synth"] * 3, "image_name": ["a.jpg", "b.jpg", "c.jpg"], "key": ["k0", "k1", "k2"]}
    features = torch.ones(3, 4)
    assert finite_rows(features, batch) is features
    features[1, 2] = float("nan")
    features[2, 0] = float("inf")
    with pytest.raises(contract.ContractError, match=r"^synth/b\.jpg \(k1\) and 1 more image\(s\): image features "
                                                     r"not finite \(NaN/inf\)"):
        finite_rows(features, batch)


def rewrite_shards(source: Path, target: Path, change_record=None, change_json=None) -> Path:
    """A copy of a shard folder with each record changed by ``change_record(record, i)`` (re-encoded: the
    checksums fit) or each JSON member's bytes by ``change_json(bytes)`` (the checksums stay as they were)."""
    target.mkdir()
    names, i = [], 0
    for shard in sorted(source.glob("*.tar")):
        names.append(shard.name)
        with wds.TarWriter(str(target / shard.name)) as sink:
            for raw in wds.WebDataset(str(shard), shardshuffle=False):
                raw = {k: v for k, v in raw.items() if not k.startswith("__") or k == "__key__"}
                if change_record is not None:
                    sample = contract.decode_sample(raw)
                    record = {k: v for k, v in sample["record"].items() if k != contract.CHECKSUMS_KEY}
                    change_record(record, i)
                    raw = contract.encode_sample(sample["key"], sample["image_bytes"],
                                                 f"x.{sample['image_ext']}", sample["label_map"], record)
                if change_json is not None:
                    raw["json"] = change_json(raw["json"])
                sink.write(raw)
                i += 1
    contract.write_index(target, names, i, "synth", {})
    return target


def test_mos_edited_in_shard(synth_shards, tmp_path):
    def one_digit(data: bytes) -> bytes:
        record = json.loads(data)
        mos = repr(record["mos"])
        return data.replace(f'"mos": {mos}'.encode(), f'"mos": {mos[:-1]}{(int(mos[-1]) + 1) % 10}'.encode())

    edited = rewrite_shards(synth_shards, tmp_path / "edited", change_json=one_digit)
    dm = ShardDataModule(train_shards=str(edited), image_size=32, batch_size=4)
    dm.setup("predict")
    with pytest.raises(contract.ContractError, match=r"synth-000000\.tar:synth_img_\w+: its JSON record \(MOS, "
                                                     r"regions\) does not match its checksum"):
        list(dm.predict_dataloader())
    intact = ShardDataModule(train_shards=str(synth_shards), image_size=32, batch_size=4)
    intact.setup("predict")
    assert len([k for b in intact.predict_dataloader() for k in b["key"]]) == 22


# --------------------------------------------------------------------------- --labels matched exactly
def write_labels(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("image,mos\n" + "".join(f"{name},{mos}\n" for name, mos in rows), encoding="utf-8")
    return path


def scored_mos(path: Path) -> dict[str, str]:
    return {Path(image).relative_to(path.parent / "p").as_posix(): row["mos"] for image, row in csv_rows(path).items()}


def test_labels_not_exact(score, tmp_path):
    cafe = unicodedata.normalize("NFC", "café.jpg")
    photos(tmp_path / "p", ("a/x.jpg", "b/x.jpg", "sub/y.jpg", cafe))
    labels = write_labels(tmp_path / "l.csv", [("b/x.jpg", "70"), ("a/x.jpg", "30"), ("y.jpg", "55"),
                                               (unicodedata.normalize("NFD", cafe), "40"), ("gone.jpg", "1")])
    status, err = score(tmp_path / "p", "--out", tmp_path / "s.csv", "--labels", labels)
    assert status == 0
    assert scored_mos(tmp_path / "s.csv") == {"a/x.jpg": "30.0", "b/x.jpg": "70.0", "sub/y.jpg": "55.0",
                                             cafe: "40.0"}
    assert f"rsfiqa score: note: --labels {labels}: 4 photo(s) matched (1 by base name only); 0 scored photo(s) " \
           f"without a row; 1 row(s) naming no scored photo (gone.jpg)" in err
    # a bare name fitting two photos is not guessed: both are counted without a row
    status, err = score(tmp_path / "p" / "a", tmp_path / "p" / "b", "--out", tmp_path / "t.csv", "--labels",
                        write_labels(tmp_path / "bare.csv", [("x.jpg", "10")]))
    assert status == 0 and all(row["mos"] == "" for row in csv_rows(tmp_path / "t.csv").values())
    assert any("0 photo(s) matched (0 by base name only); 2 scored photo(s) without a row" in line for line in err)
    refused = {"twice": ([("a/x.jpg", "1"), ("a/x.jpg", "2")],
                         "'a/x.jpg' is listed twice (lines 2 and 3); keep one row"),
               "nfd_twice": ([(cafe, "1"), (unicodedata.normalize("NFD", cafe), "2")], "is listed twice"),
               "nan": ([("a/x.jpg", "nan")], "line 2: MOS 'nan' of 'a/x.jpg' is not a finite number"),
               "inf": ([("a/x.jpg", "inf")], "line 2: MOS 'inf' of 'a/x.jpg' is not a finite number")}
    for name, (rows, message) in refused.items():
        status, err = score(tmp_path / "p", "--out", tmp_path / "u.csv", "--labels",
                            write_labels(tmp_path / f"{name}.csv", rows))
        assert status == 1 and len(err) == 1 and message in err[0], (name, err)
    assert not score.loads[2:], "refused before the model is loaded"


def test_out_is_labels(score, tmp_path):
    photos(tmp_path / "p")
    labels = write_labels(tmp_path / "l.csv", [("a.jpg", "50")])
    before = labels.read_bytes()
    for option in ("--out", "--report"):
        target = labels if option == "--out" else labels.with_suffix(".html")
        if option == "--report":
            labels = write_labels(target, [("a.jpg", "50")])
        status, err = score(tmp_path / "p", option, target, "--labels", labels)
        assert status == 1 and err == [f"rsfiqa score: error: {option} {target}: is the --labels file and would be "
                                       f"overwritten; choose another output name"]
        assert labels.read_bytes() == before
    assert not score.loads


def test_heatmaps_of_an_earlier_run(score, tmp_path):
    photos(tmp_path / "p")
    first, _ = score(tmp_path / "p", "--heatmap", tmp_path / "p", "--out", tmp_path / "s0.csv")  # refused: inside
    status, _ = score(tmp_path / "p", "--out", tmp_path / "s1.csv", "--heatmap", tmp_path / "h")
    for heatmap in (tmp_path / "h").glob("*.heatmap.png"):  # the user moves them beside the photos
        heatmap.rename(tmp_path / "p" / heatmap.name)
    status, err = score(tmp_path / "p", "--out", tmp_path / "s2.csv")
    assert first == 1 and status == 0
    assert sorted(Path(r).name for r in csv_rows(tmp_path / "s2.csv")) == ["a.jpg", "b.png"]
    assert any(line.startswith("rsfiqa score: note: skipped 2 heatmap(s) of an earlier run (*.heatmap.png): ")
               for line in err)
    named, _ = score(tmp_path / "p" / "a.jpg.heatmap.png", "--out", tmp_path / "s3.csv")  # named: scored
    assert named == 0 and len(csv_rows(tmp_path / "s3.csv")) == 1


def test_report_beside_the_photos(score, tmp_path):
    photos(tmp_path / "r_files")  # the user's photos in the folder a report named r.html would fill
    refused, err = score(tmp_path / "r_files", "--out", tmp_path / "s0.csv", "--report", tmp_path / "r.html")
    assert refused == 1 and err[-1].startswith(f"rsfiqa score: error: --report: its thumbnails folder "
                                               f"{tmp_path / 'r_files'} is or holds the input ")
    assert sorted(p.name for p in (tmp_path / "r_files").iterdir()) == ["a.jpg", "b.png"], "photos untouched"
    photos(tmp_path / "p")
    (tmp_path / "p" / "page_files").mkdir()
    (tmp_path / "p" / "page_files" / "2024.jpg").write_bytes((tmp_path / "p" / "a.jpg").read_bytes())
    status, err = score(tmp_path / "p", "--out", tmp_path / "s1.csv", "--report", tmp_path / "p" / "page.html")
    assert status == 0 and (tmp_path / "p" / "page_files" / "2024.jpg").is_file(), "a report removes only its own"
    assert any(line == f"rsfiqa score: note: not scanning {tmp_path / 'p' / 'page_files'} (this run's --report "
                       f"thumbnails folder)" for line in err)
    assert sorted(Path(r).name for r in csv_rows(tmp_path / "s1.csv")) == ["a.jpg", "b.png"]
    status, err = score(tmp_path / "p", "--out", tmp_path / "s2.csv")  # a rerun without --report
    assert status == 0 and sorted(Path(r).name for r in csv_rows(tmp_path / "s2.csv")) == ["2024.jpg", "a.jpg", "b.png"]
    assert any(line.startswith("rsfiqa score: note: skipped 4 thumbnail(s) of an earlier --report: ") for line in err)


def test_output_folder_unusable(dataset, tmp_path, monkeypatch, capsys):
    from scripts import make_model

    blocker = tmp_path / "file"
    blocker.write_text("x")
    started = []
    monkeypatch.setattr(make_model, "training_folder", lambda *a: started.append(a))
    clive = tmp_path / "clive"
    clive.mkdir()
    (clive / "labels.csv").write_text("image,mos\n")
    status = make_model.main(["--clive", str(clive), "--out", str(blocker / "m.pt"), "--work", str(tmp_path / "w")])
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and not started, "refused before any work"
    assert len(err) == 1 and err[0].startswith(f"make model: error: --out {blocker}: cannot be created (")
    status = annotate_cli.main(["--dataset", "csv", "--root", str(dataset), "--out", str(blocker / "out"),
                                "--no-progress", *OVERRIDES])
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith(f"annotate: error: --out {blocker / 'out'}: cannot "
                                                               f"be created")


def test_fit_output_folder_unusable(synth_shards, tiny_model_args, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for option in ("--trainer.default_root_dir", "--test_report.out_dir"):
        status, err = fit(tmp_path / "w", fit_args(synth_shards, tiny_model_args, option, str(blocker / "runs")),
                          capsys)
        assert status == 2 and err[-1].startswith(f"rsfiqa fit: error: {option} {blocker / 'runs'}: cannot be "
                                                  f"created"), err
    logger = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(blocker / "l")}}]
    status, err = fit(tmp_path / "w", fit_args(synth_shards, tiny_model_args, "--trainer.logger", json.dumps(logger)),
                      capsys)
    assert status == 2 and "--trainer.logger save_dir" in err[-1] and "cannot be created" in err[-1], err
    assert not list((tmp_path / "w").rglob("*.ckpt"))


# --------------------------------------------------------------------------- removed inputs
def test_inputs_removed(dataset, tmp_path):
    out = tmp_path / "out"
    run_annotate(dataset, out)
    set_labels(dataset, [("good_0.jpg", "20.0"), ("good_1.jpg", "50.0")])  # good_2's row deleted
    (dataset / "images" / "good_0.jpg").unlink()  # and good_0's file
    with pytest.raises(AnnotateError, match=r"2 finished sample\(s\) have no usable label row or image in .* any "
                                            r"more, e.g. good_0.jpg, good_2.jpg; .* --drop-removed"):
        run_annotate(dataset, out)
    summary = annotate("csv", dataset, out, load_config(None, OVERRIDES), progress=False, drop_removed=True)
    assert summary.removed == ["good_0.jpg", "good_2.jpg"]
    stored = ShardDataModule(train_shards=str(out), image_size=32, batch_size=4)
    stored.setup("predict")
    assert [n for b in stored.predict_dataloader() for n in b["image_name"]] == ["good_1.jpg"]
    assert json.loads((out / "index.json").read_text())["count"] == 1
    assert run_annotate(dataset, out).removed == [], "removed once: a rerun is clean"


# --------------------------------------------------------------------------- degenerate data
def test_degenerate_data(synth_shards, tmp_path, tiny_model_args, capsys):
    same = rewrite_shards(synth_shards, tmp_path / "same", lambda r, i: r.update(mos=3.0))
    one_val = rewrite_shards(synth_shards, tmp_path / "oneval",
                             lambda r, i: r.update(splits={"seed0": "val" if i == 0 else "train"}))
    cases = [(fit_args(same, tiny_model_args), "same (train split of 'seed0'): all 13 samples have the same MOS (3)"),
             (fit_args(one_val, tiny_model_args), "1 validation sample(s); SRCC and PLCC need at least 2"),
             (fit_args(synth_shards, tiny_model_args, "--data.batch_size", "0"), "data.batch_size must be >= 1"),
             (fit_args(synth_shards, tiny_model_args, "--data.batch_size", "-3"), "data.batch_size must be >= 1"),
             (fit_args(synth_shards, tiny_model_args, "--model.lr", "-1"), "model.lr must be > 0, got -1")]
    for i, (args, message) in enumerate(cases):
        status, err = fit(tmp_path / f"run{i}", args, capsys)
        assert status == 2 and err[-1].startswith("rsfiqa fit: error: ") and message in err[-1], (message, err)
        assert not list((tmp_path / f"run{i}").rglob("*.ckpt")), "refused before training"
    with pytest.raises(SystemExit) as exit_:
        annotate_cli.main(["--dataset", "csv", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--limit", "-1"])
    assert exit_.value.code == 2 and "--limit" in capsys.readouterr().err


# --------------------------------------------------------------------------- workers and interrupts
def test_too_many_workers(monkeypatch, caplog):
    annotator = Annotator(ClassicalSegmenter(), MeasuresDescriber())
    with caplog.at_level(logging.WARNING, logger="annotate.parallel"):
        pool = parallel.AnnotatorPool(annotator, 100_000)
    with pool:
        assert pool.workers == parallel.available_cores()
        assert pool.pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN, "Ctrl-C: parent only"
    assert caplog.messages == [f"--workers 100000: capped at {parallel.available_cores()}, the CPU cores this "
                               f"process may use"]

    def cannot_fork(*args, **kwargs):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    with parallel.AnnotatorPool(annotator, 1) as pool:
        monkeypatch.setattr(pool.pool, "submit", cannot_fork)
        with pytest.raises(OSError) as err:
            pool.submit([badinputs.jpeg()])
    assert one_line(err.value).startswith("annotation worker processes could not start or died (")
    assert one_line(err.value).endswith("; use fewer --workers")



def test_too_many_workers_note_is_one_prefixed_line(dataset, tmp_path, capsys):
    status = annotate_cli.main(["--dataset", "csv", "--root", str(dataset), "--out", str(tmp_path / "o"),
                                "--workers", "100000", "--no-progress", *OVERRIDES])
    err = capsys.readouterr().err.splitlines()
    assert status == 0
    assert f"annotate: warning: --workers 100000: capped at {parallel.available_cores()}, the CPU cores this " \
           f"process may use" in err

def test_interrupted_scoring_with_report(score, tmp_path, monkeypatch):
    photos(tmp_path / "p", ("a.jpg", "b.png", "c.jpg"))
    interrupt_scoring_after(2, monkeypatch)
    status, err = score(tmp_path / "p", "--out", tmp_path / "s.csv", "--report", tmp_path / "r.html",
                        "--batch-size", "1")
    assert status == 130 and err[-2:] == [f"rsfiqa score: report: {tmp_path / 'r.html'}",
                                          "rsfiqa score: interrupted; the images scored so far are in the output"]
    assert "Traceback" not in "\n".join(err)
    page = (tmp_path / "r.html").read_text()
    assert "RSFIQA scores of 2 photos" in page and page.count("<img") == 2 * 2  # photo + overlay each


def test_disk_full_while_sealing(dataset, tmp_path, monkeypatch, capfd):
    real_open = builtins.open

    def onto_a_full_disk(path, mode="r", *args, **kwargs):
        full = str(path).endswith(".tar.tmp") and "w" in mode
        return real_open("/dev/full" if full else path, mode, *args, **kwargs)

    monkeypatch.setattr(writer, "open", onto_a_full_disk, raising=False)
    unraisable = []  # what Python would print as "Exception ignored in ... Traceback" at garbage collection
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    status = annotate_cli.main(["--dataset", "csv", "--root", str(dataset), "--out", str(tmp_path / "out"),
                                "--no-progress", *OVERRIDES])
    gc.collect()  # an unclosed tar stream would print its traceback now
    err = capfd.readouterr().err.splitlines()
    assert status == 1 and err == [f"annotate: error: {tmp_path / 'out' / 'csv-p0of1-000000.tar.tmp'}: No space "
                                   f"left on device; free space there or choose another folder"]
    assert unraisable == []
