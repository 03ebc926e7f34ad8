"""Runs that go wrong (``badinputs.run_kinds``, docs/FAILURES.md "Outputs, reruns and user errors"):
outputs never destroy inputs, reruns notice what changed, duplicates are never trained on twice, a
resumed checkpoint is the configured network, shard bytes are verified, a user error is one line,
and everything scanned is accounted for. One ``test_<kind>`` per kind; everything runs in-process
on tiny images (scoring with the shipped model, loaded once)."""
from __future__ import annotations

import csv
import errno
import json
import shutil
import sys
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import badinputs
from annotate import cli as annotate_cli
from annotate import pipeline as annotate_pipeline
from annotate.config import AnnotateError, load_config
from annotate.pipeline import DUPLICATE_CONTENT, REPORTED_SKIPS, annotate
from rsfiqa import cli
from rsfiqa.data.datamodule import ShardDataModule
from rsfiqa.inference import score_cli
from rsfiqa.inference.outputs import CSV_COLUMNS, CsvRows
from rsfiqa.inference.scorer import Scorer
from rsfiqa.model.net import NetConfig
from rsfiqa_core import contract
from rsfiqa_core.usererrors import one_line
from conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
KINDS = badinputs.run_kinds()
OVERRIDES = ["shards.maxcount=2", "batch_size=2", "dataset.mos_range=[0,100]"]


def test_every_run_kind_is_documented_and_tested():
    table = (REPO / "docs" / "FAILURES.md").read_text()
    documented = {k.kind for k in KINDS if f"| `{k.kind}` |" in table}
    assert documented == {k.kind for k in KINDS}, sorted({k.kind for k in KINDS} - documented)
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    assert {k.kind for k in KINDS} <= tested, sorted({k.kind for k in KINDS} - tested)


# --------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def shipped_scorer() -> Scorer:
    torch.set_num_threads(1)
    return Scorer.from_pretrained(device="cpu", regions=True)  # annotating: serves --heatmap and --report runs too


@pytest.fixture
def score(shipped_scorer, monkeypatch, capsys):
    """``rsfiqa score ARGS`` in-process with the shipped model loaded once: (exit status, stderr lines).
    ``score.loads`` counts how often a run got as far as loading the model."""
    loads = []

    def load(args):
        loads.append(args)
        return shipped_scorer

    monkeypatch.setattr(score_cli, "load_scorer", load)

    def run(*args: str) -> tuple[int, list[str]]:
        status = score_cli.main([*map(str, args), "--no-progress", "--device", "cpu"])
        return status, capsys.readouterr().err.splitlines()

    run.loads = loads
    return run


def photos(folder: Path, names: tuple[str, ...] = ("a.jpg", "b.png")) -> dict[str, bytes]:
    """Tiny photos in ``folder``: name -> bytes."""
    written = {}
    for i, name in enumerate(names):
        written[name] = badinputs.jpeg(i)
        badinputs.write_file(folder / Path(name).parent, Path(name).name, written[name])
    return written


def csv_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["image"]: row for row in csv.DictReader(f)}


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("rsfiqa score: error: ")]


def test_heatmap_into_scanned_folder(score, tmp_path):
    before = photos(tmp_path / "photos")
    status, err = score(tmp_path / "photos", "--heatmap", tmp_path / "photos", "--out", tmp_path / "s.csv")
    assert status == 1 and len(err) == 1 and "is or holds the scanned folder" in err[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "photos").iterdir()} == before and not score.loads
    status, err = score(tmp_path / "photos", "--heatmap", tmp_path, "--out", tmp_path / "s.csv")  # a parent
    assert status == 1 and "is or holds the scanned folder" in err[0]


def test_heatmap_name_collision(score, tmp_path):
    photos(tmp_path / "p", ("y.jpg", "y.png", "a/x.jpg", "b/x.jpg"))
    status, _ = score(tmp_path / "p", "--heatmap", tmp_path / "heat", "--out", tmp_path / "s.csv")
    rows = csv_rows(tmp_path / "s.csv")
    assert status == 0 and len(rows) == 4
    maps = sorted(str(p.relative_to(tmp_path / "heat")) for p in (tmp_path / "heat").rglob("*.png"))
    assert maps == ["a/x.jpg.heatmap.png", "b/x.jpg.heatmap.png", "y.jpg.heatmap.png", "y.png.heatmap.png"]
    assert sorted(Path(r["heatmap"]).relative_to(tmp_path / "heat").as_posix() for r in rows.values()) == maps


def test_heatmap_folder_inside_scanned_folder(score, tmp_path):
    photos(tmp_path / "p")
    runs = [score(tmp_path / "p", "--heatmap", tmp_path / "p" / "heat", "--out", tmp_path / f"s{i}.csv")
            for i in range(2)]
    assert [status for status, _ in runs] == [0, 0]
    assert sorted(csv_rows(tmp_path / "s1.csv")) == sorted(csv_rows(tmp_path / "s0.csv")) == [
        str(tmp_path / "p" / "a.jpg"), str(tmp_path / "p" / "b.png")]
    assert any("note: not scanning" in line and "heat" in line for line in runs[1][1])


def test_out_names_an_input(score, tmp_path):
    photos(tmp_path / "p")
    data = (tmp_path / "p" / "data.json")
    data.write_text("[]")
    status, err = score(tmp_path / "p" / "a.jpg", data, "--out", data)
    assert status == 1 and "--out" in err[-1] and "would be overwritten" in err[-1]
    assert data.read_text() == "[]" and not score.loads


def test_heatmap_folder_unusable(score, tmp_path):
    photos(tmp_path / "p")
    (tmp_path / "file").write_text("x")
    status, err = score(tmp_path / "p", "--heatmap", tmp_path / "file" / "heat", "--out", tmp_path / "s.csv")
    assert status == 1 and len(err) == 1 and "--heatmap" in err[0] and "cannot be created" in err[0]
    assert not score.loads and not (tmp_path / "s.csv").exists(), "refused before any work"


def test_one_heatmap_unwritable(score, tmp_path):
    photos(tmp_path / "p")
    (tmp_path / "heat" / "a.jpg.heatmap.png").mkdir(parents=True)  # a folder where a.jpg's heatmap goes
    status, err = score(tmp_path / "p", "--heatmap", tmp_path / "heat", "--out", tmp_path / "s.csv")
    rows = csv_rows(tmp_path / "s.csv")
    assert status == 2
    assert len(errors(err)) == 1 and "a.jpg: heatmap not written" in errors(err)[0]
    assert sorted(Path(r).name for r in rows) == ["a.jpg", "b.png"], "the computed scores are kept"
    assert rows[str(tmp_path / "p" / "a.jpg")]["heatmap"] == "" and Path(rows[str(tmp_path / "p" / "b.png")][
        "heatmap"]).is_file()


def interrupt_scoring_after(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Scorer.iter_scored`` raises KeyboardInterrupt (Ctrl-C) after ``count`` images."""
    real = Scorer.iter_scored

    def interrupted(self, *args, **kwargs):
        for i, item in enumerate(real(self, *args, **kwargs)):
            if i == count:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Scorer, "iter_scored", interrupted)


def test_interrupted_scoring(score, shipped_scorer, tmp_path, monkeypatch):
    photos(tmp_path / "p", ("a.jpg", "b.png", "c.jpg"))
    interrupt_scoring_after(2, monkeypatch)
    status, err = score(tmp_path / "p", "--out", tmp_path / "s.json", "--batch-size", "1")
    assert status == 130 and err[-1] == "rsfiqa score: interrupted; the images scored so far are in the output"
    records = json.loads((tmp_path / "s.json").read_text())  # a complete JSON list
    assert [Path(r["image"]).name for r in records] == ["a.jpg", "b.png"]


def test_out_in_missing_folder(score, tmp_path):
    photos(tmp_path / "p")
    status, err = score(tmp_path / "p", "--out", tmp_path / "nowhere" / "s.csv")
    assert status == 1 and err == [f"rsfiqa score: error: --out {tmp_path / 'nowhere' / 's.csv'}: folder "
                                   f"{tmp_path / 'nowhere'} does not exist (create it first)"]
    assert not score.loads


def test_broken_symlink(score, tmp_path):
    photos(tmp_path / "p")
    link = badinputs.broken_link(tmp_path / "p", "gone.jpg")
    status, err = score(tmp_path / "p", "--out", tmp_path / "s.csv")
    assert status == 2 and len(csv_rows(tmp_path / "s.csv")) == 2
    assert errors(err) == [f"rsfiqa score: error: {link}: broken symbolic link (its target "
                           f"{tmp_path / 'p' / 'missing-target-of-gone.jpg'} does not exist)"]
    # annotation: a broken link among the images is a skip with its reason
    root = tmp_path / "ds"
    badinputs.write_csv_dataset(root, kinds=[], good=2)
    badinputs.broken_link(root / "images", "gone.jpg")
    summary = annotate("csv", root, tmp_path / "out", load_config(None, OVERRIDES), progress=False)
    assert [(s["item"], s["reason"].split(" (")[0]) for s in summary.skipped] == [
        ("images/gone.jpg", "broken symbolic link")]


def test_unlisted_extension(score, tmp_path):
    photos(tmp_path / "p")
    (tmp_path / "p" / "raw.heic").write_bytes(b"x")
    (tmp_path / "p" / "notes.txt").write_text("x")
    status, err = score(tmp_path / "p", "--out", tmp_path / "s.csv")
    notes = [line for line in err if line.startswith("rsfiqa score: note: skipped 2 file(s) without an image")]
    assert status == 0 and len(notes) == 1
    assert str(tmp_path / "p" / "raw.heic") in notes[0] and str(tmp_path / "p" / "notes.txt") in notes[0]


# --------------------------------------------------------------------------- annotation
@pytest.fixture
def dataset(tmp_path) -> Path:
    """3 ordinary photos with MOS 20, 50, 80 on 0..100 (``images/good_<i>.jpg``, ``labels.csv``)."""
    root = tmp_path / "ds"
    badinputs.write_csv_dataset(root, kinds=[], good=3)
    return root


def run_annotate(root: Path, out: Path, *overrides: str):
    return annotate("csv", root, out, load_config(None, [*OVERRIDES, *overrides]), progress=False)


def set_labels(root: Path, rows: list[tuple[str, str]]) -> None:
    (root / "labels.csv").write_text("image,mos\n" + "".join(f"{name},{mos}\n" for name, mos in rows))


def test_mos_corrected(dataset, tmp_path):
    run_annotate(dataset, tmp_path / "out")
    set_labels(dataset, [("good_0.jpg", "20.0"), ("good_1.jpg", "55.0"), ("good_2.jpg", "80.0")])
    with pytest.raises(AnnotateError, match=r"1 finished sample\(s\) were made from other inputs .*good_1\.jpg: "
                                            r"mos 50\.0 -> 55\.0.*--redo-changed.*--force-new"):
        run_annotate(dataset, tmp_path / "out")
    # --redo-changed: that sample is taken out of its shard and annotated again; the other shards stay as they were
    shards = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.tar")}
    summary = annotate("csv", dataset, tmp_path / "out", load_config(None, OVERRIDES), progress=False,
                       redo_changed=True)
    assert summary.redone == ["good_1.jpg: mos 50.0 -> 55.0"] and summary.written == 1 and summary.index_count == 3
    assert "redone (inputs changed): good_1.jpg: mos 50.0 -> 55.0" in summary.report()
    assert sorted((r["image"], r["mos"]) for r in read_records(tmp_path / "out")) == [
        ("good_0.jpg", 20.0), ("good_1.jpg", 55.0), ("good_2.jpg", 80.0)]
    holding = {name for name, data in shards.items() if b"good_1" in data}
    assert all((tmp_path / "out" / name).read_bytes() == data for name, data in shards.items() if name not in holding)
    assert run_annotate(dataset, tmp_path / "out").already_done == 3  # and now nothing differs


def test_image_replaced(dataset, tmp_path):
    run_annotate(dataset, tmp_path / "out")
    (dataset / "images" / "good_2.jpg").write_bytes(badinputs.jpeg(7))
    with pytest.raises(AnnotateError, match=r"good_2\.jpg: image bytes differ"):
        run_annotate(dataset, tmp_path / "out")


def test_other_root(dataset, tmp_path):
    summary = run_annotate(dataset, tmp_path / "out")
    copy = Path(shutil.copytree(dataset, tmp_path / "copy"))
    assert run_annotate(copy, tmp_path / "out").already_done == summary.written  # same content: nothing to redo
    (copy / "images" / "good_0.jpg").write_bytes(badinputs.jpeg(9))
    with pytest.raises(AnnotateError, match=rf"good_0\.jpg: image bytes differ \(annotated from {dataset}\)"):
        run_annotate(copy, tmp_path / "out")
    record = next(r for r in read_records(tmp_path / "out") if r["image"] == "good_1.jpg")
    assert record["source"] == {"root": str(dataset), "file": "images/good_1.jpg"}
    assert record["checksums"]["jpg"] == contract.content_hash((dataset / "images" / "good_1.jpg").read_bytes())


def read_records(out: Path) -> list[dict]:
    from test_annotate_pipeline import read_samples

    return [s["record"] for s in read_samples(out)]


def test_rows_appended_without_mos_range(dataset, tmp_path):
    no_range = ["dataset.mos_range=null"]
    run_annotate(dataset, tmp_path / "out", *no_range)  # range inferred: [20, 80]
    badinputs.write_file(dataset / "images", "good_3.jpg", badinputs.jpeg(5))
    with open(dataset / "labels.csv", "a") as f:
        f.write("good_3.jpg,95\n")
    with pytest.raises(AnnotateError, match=r"mos_range \[20\.0, 80\.0\] -> \[20\.0, 95\.0\].*set dataset\.mos_range"):
        run_annotate(dataset, tmp_path / "out", *no_range)
    norms = {r["mos_range"][1] for r in read_records(tmp_path / "out")}
    assert norms == {80.0}, "the folder keeps one normalisation"


def test_same_image_twice(tmp_path):
    root = tmp_path / "ds"
    badinputs.write_csv_dataset(root, kinds=[], good=3)
    shutil.copy(root / "images" / "good_2.jpg", root / "images" / "copy_of_2.jpg")
    set_labels(root, [("good_0.jpg", "20"), ("images/good_0.jpg", "20"), ("good_1.jpg", "50"),
                      ("good_2.jpg", "80"), ("copy_of_2.jpg", "80")])
    summary = run_annotate(root, tmp_path / "out", "dataset.val_frac=0.3")
    stored = sorted(r["image"] for r in read_records(tmp_path / "out"))
    assert len(stored) == 3 and summary.written == 3
    # the first of each pair in key order is kept (keys sort by the name: copy_of_2 < good_0 < good_2 < images_...)
    assert stored == ["copy_of_2.jpg", "good_0.jpg", "good_1.jpg"]
    assert sorted((s["item"], s["reason"]) for s in summary.skipped) == [
        ("good_2.jpg", f"{DUPLICATE_CONTENT} (same bytes as copy_of_2.jpg, which is kept)"),
        ("images/good_0.jpg", f"{DUPLICATE_CONTENT} (same bytes as good_0.jpg, which is kept)")]


def test_interrupted_annotation(dataset, tmp_path, monkeypatch, capsys):
    real = annotate_pipeline.annotate_batch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(annotate_pipeline, "annotate_batch", interrupted)
    argv = ["--dataset", "csv", "--root", str(dataset), "--out", str(tmp_path / "out"), "--no-progress",
            *OVERRIDES, "shards.maxcount=1"]
    assert annotate_cli.main(argv) == 130
    assert capsys.readouterr().err.splitlines() == [
        "annotate: interrupted; finished shards are kept; rerun the same command to resume"]
    monkeypatch.setattr(annotate_pipeline, "annotate_batch", real)
    assert annotate_cli.main(argv) == 0
    assert "already done 2, written 1" in capsys.readouterr().out


def test_disk_full(dataset, tmp_path, monkeypatch, capsys):
    def full(self, sample):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("webdataset.TarWriter.write", full)
    status = annotate_cli.main(["--dataset", "csv", "--root", str(dataset), "--out", str(tmp_path / "out"),
                                "--no-progress", *OVERRIDES])
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and err == [f"annotate: error: {tmp_path / 'out' / 'csv-p0of1-000000.tar.tmp'}: No space left "
                                   f"on device; free space there or choose another folder"]
    assert not list((tmp_path / "out").glob("*.tmp")), "the unfinished shard is dropped"
    full = open("/dev/full", "w")  # scoring: every write there hits a full disk
    with pytest.raises(OSError) as err:
        CsvRows(full, CSV_COLUMNS, name="scores.csv")
    with suppress(OSError):  # closing flushes the rest: a full disk again
        full.close()
    assert one_line(err.value) == "scores.csv: No space left on device; free space there or choose another folder"


def test_skipped_names_in_summary(tmp_path):
    root = tmp_path / "ds"
    kinds = [k for k in badinputs.all_kinds() if k.outcome == "skip"]
    badinputs.write_csv_dataset(root, kinds=kinds, good=2)
    summary = run_annotate(root, tmp_path / "out")
    report = summary.report()
    assert f"all under 'skipped' in {tmp_path / 'out' / 'summary-csv-p0of1.json'}" in report
    for s in summary.skipped[:REPORTED_SKIPS]:
        assert f"    {s['item']}: {s['reason']}" in report.splitlines()
    assert len(summary.skipped) == len(kinds)


# --------------------------------------------------------------------------- training data and fit
def fit(workdir: Path, args: list[str], capsys) -> tuple[object, list[str]]:
    workdir.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["rsfiqa"])
        result = cli.main(["fit", *args])
    return result, capsys.readouterr().err.splitlines()


def fit_args(shards: Path, tiny_model_args: list[str], *more: str) -> list[str]:
    return ["--data.train_shards", str(shards), "--data.image_size", "32", "--data.batch_size", "5",
            *tiny_model_args, "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *more]


def test_shard_folder_twice(synth_shards, tmp_path, tiny_model_args, capsys):
    dm = ShardDataModule(train_shards=[str(synth_shards), str(synth_shards) + "/"])
    with pytest.raises(contract.ContractError, match="is listed twice"):
        dm.setup("fit")
    copy = shutil.copytree(synth_shards, tmp_path / "copy")
    with pytest.raises(contract.ContractError, match=r"both hold sample synth_img_0000_"):
        ShardDataModule(train_shards=[str(synth_shards), str(copy)]).setup("fit")
    status, err = fit(tmp_path, ["--data.train_shards", f"[{synth_shards}, {copy}]", *fit_args(
        synth_shards, tiny_model_args)[2:]], capsys)
    assert status == 2 and err[-1].startswith("rsfiqa fit: error: data.train_shards: ")


@pytest.fixture(scope="module")
def tiny_checkpoint(synth_shards, tiny_model_args, tmp_path_factory) -> Path:
    """last.ckpt of a 1-epoch fit of the tiny model (embed_dim 32)."""
    torch.set_num_threads(1)
    workdir = tmp_path_factory.mktemp("tiny-fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["rsfiqa"])
        cli.main(["fit", *fit_args(synth_shards, tiny_model_args)])
    return workdir / "runs" / "rsfiqa" / "version_0" / "checkpoints" / "last.ckpt"


def test_resume_other_network(synth_shards, tiny_model_args, tmp_path, capsys):
    """Refused at parse time, before anything is built: a checkpoint holding only the hyperparameters of
    the tiny network suffices."""
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"hyper_parameters": {"net": asdict(NetConfig(**TINY_MODEL)), "lr": 1e-3}}, ckpt)
    args = fit_args(synth_shards, tiny_model_args, "--model.net.embed_dim", "16", "--model.net.use_mhf", "false",
                    "--ckpt_path", str(ckpt))
    status, err = fit(tmp_path, args, capsys)
    assert status == 2 and err == [
        f"rsfiqa fit: error: --ckpt_path {ckpt}: the checkpoint's network differs from the configured one "
        f"(model.net.embed_dim: config 16, checkpoint 32, model.net.use_mhf: config False, checkpoint True); fix "
        f"the config, or add --take_checkpoint_network true to train the checkpoint's network"]
    same = NetConfig(**{**TINY_MODEL, "pretrained": "imagenet"})  # pretrained is not compared: the weights are
    assert cli.network_differences(same, {"net": asdict(NetConfig(**TINY_MODEL))}) == {}


@pytest.mark.slow
def test_resume_taking_the_checkpoints_network(tiny_checkpoint, synth_shards, tiny_model_args, tmp_path, capsys):
    args = fit_args(synth_shards, tiny_model_args, "--model.net.embed_dim", "16", "--ckpt_path", str(tiny_checkpoint),
                    "--trainer.max_epochs", "2", "--take_checkpoint_network", "true")
    run, _ = fit(tmp_path, args, capsys)
    assert run.model.hparams["net"]["embed_dim"] == 32 and run.trainer.current_epoch == 2


def test_zeroed_bytes_in_shard(synth_shards, tmp_path):
    shards = Path(shutil.copytree(synth_shards, tmp_path / "s"))
    first = sorted(shards.glob("*.tar"))[0]
    dm = ShardDataModule(train_shards=str(shards), image_size=32, batch_size=4, hflip=False)
    dm.setup("predict")
    assert len([k for b in dm.predict_dataloader() for k in b["key"]]) == 22  # intact: verified and read
    big = tmp_path / "big"
    one_sample_shard(big, first)
    member = badinputs.zero_member_bytes(big / "big-000000.tar", ".jpg")
    dm = ShardDataModule(train_shards=str(big), image_size=32, batch_size=4, hflip=False)
    dm.setup("predict")
    with pytest.raises(contract.ContractError, match=rf"{big / 'big-000000.tar'}:{member.split('.')[0]}: member "
                                                     r"'jpg' does not match its checksum"):
        list(dm.predict_dataloader())


def one_sample_shard(folder: Path, source_shard: Path) -> None:
    """A shard of one sample: the first record of ``source_shard`` with a large noisy JPEG of its size."""
    import webdataset as wds

    sample = contract.decode_sample(next(iter(wds.WebDataset(str(source_shard), shardshuffle=False))))
    record = {k: v for k, v in sample["record"].items() if k != contract.CHECKSUMS_KEY}
    folder.mkdir()
    with wds.TarWriter(str(folder / "big-000000.tar")) as sink:
        sink.write(contract.encode_sample(sample["key"], badinputs.noisy_jpeg(sample["label_map"].shape), "x.jpg",
                                          sample["label_map"], record))
    contract.write_index(folder, ["big-000000.tar"], 1, "synth", {})


def test_old_shards_without_checksums_still_load(synth_shards, tmp_path):
    import webdataset as wds

    folder = tmp_path / "old"
    folder.mkdir()
    with wds.TarWriter(str(folder / "old-000000.tar")) as sink:
        for raw in wds.WebDataset(str(sorted(synth_shards.glob("*.tar"))[0]), shardshuffle=False):
            record = json.loads(raw["json"])
            record.pop(contract.CHECKSUMS_KEY, None)  # as written before checksums existed
            sink.write({**{k: v for k, v in raw.items() if not k.startswith("__") or k == "__key__"},
                        "json": json.dumps(record).encode()})
    contract.write_index(folder, ["old-000000.tar"], 6, "synth", {})
    dm = ShardDataModule(train_shards=str(folder), image_size=32, batch_size=4)
    dm.setup("predict")
    assert len([k for b in dm.predict_dataloader() for k in b["key"]]) == 6


# --------------------------------------------------------------------------- one-line user errors
def test_malformed_yaml(dataset, tmp_path, tiny_model_args, synth_shards, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  net: [1,\n")
    status = annotate_cli.main(["--dataset", "csv", "--root", str(dataset), "--out", str(tmp_path / "o"),
                                "--config", str(bad)])
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith(f"annotate: error: {bad}: cannot read config")
    status = annotate_cli.main(["--dataset", "csv", "--root", str(dataset), "--out", str(tmp_path / "o"),
                                "batch_size=[1,"])
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and len(err) == 1 and "fix the YAML syntax" in err[0]
    status, err = fit(tmp_path, ["--config", str(bad), *fit_args(synth_shards, tiny_model_args)], capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith(f"rsfiqa fit: error: {bad}: malformed YAML (")
    assert err[0].endswith("; fix the syntax (key: value, nested keys indented)")


def test_random_bytes_checkpoint(synth_shards, tiny_model_args, tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(badinputs.random_bytes(5000))
    status, err = fit(tmp_path, [*fit_args(synth_shards, tiny_model_args), "--ckpt_path", str(junk)], capsys)
    expected = (f"{junk}: not a readable checkpoint written by `rsfiqa fit` (torch cannot load it: "
                f"UnpicklingError); pass a .ckpt from runs/<name>/version_N/checkpoints/")
    assert status == 2 and err == [f"rsfiqa fit: error: {expected}"]
    photos(tmp_path / "p")
    status = score_cli.main([str(tmp_path / "p"), "--ckpt", str(junk), "--device", "cpu"])
    assert status == 1 and capsys.readouterr().err.splitlines() == [f"rsfiqa score: error: {expected}"]


def test_shards_folder_missing_or_empty(tmp_path, tiny_model_args, capsys):
    (tmp_path / "empty").mkdir()
    for folder, problem in (("none", "shard directory not found"), ("empty", "no index.json, so not an annotated")):
        status, err = fit(tmp_path, fit_args(tmp_path / folder, tiny_model_args), capsys)
        assert status == 2 and err[-1].startswith(f"rsfiqa fit: error: {tmp_path / folder}: {problem}")
        assert not any("Traceback" in line for line in err)


def test_shard_error_in_a_dataloader_worker_is_one_line(synth_shards, tmp_path):
    shards = Path(shutil.copytree(synth_shards, tmp_path / "s"))
    badinputs.zero_member_bytes(sorted(shards.glob("*.tar"))[0], ".regions.png", count=40)
    dm = ShardDataModule(train_shards=str(shards), image_size=32, batch_size=4, num_workers=1)
    dm.setup("predict")
    with pytest.raises(contract.ContractError) as err:
        list(dm.predict_dataloader())
    assert "Original Traceback" in str(err.value)  # torch wraps the worker's traceback into the message
    line = one_line(err.value)
    assert line.startswith(f"{sorted(shards.glob('*.tar'))[0]}:") and "member 'regions.png' does not match" in line
    assert "Traceback" not in line


def test_debug_flag(dataset, tmp_path, score, tiny_model_args, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(AnnotateError):
        annotate_cli.main(["--dataset", "csv", "--root", str(dataset), "--out", str(tmp_path / "o"),
                           "--config", str(bad), "--debug"])
    photos(tmp_path / "p")
    with pytest.raises(score_cli.ScoringSetupError, match="does not exist"):
        score(tmp_path / "p", "--out", tmp_path / "nowhere" / "s.csv", "--debug")
    with pytest.raises(contract.ContractError, match="shard directory not found"):
        fit(tmp_path, [*fit_args(tmp_path / "none", tiny_model_args), "--debug"], capsys)
