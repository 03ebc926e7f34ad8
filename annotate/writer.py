"""Resumable, byte-deterministic webdataset shard writing (docs/DESIGN.md, "Shards").

One output directory holds one dataset, written by any number of parts (``--part i/N``)::

    <dataset>-p<i>of<N>-<seq:06d>.tar       completed shards, never touched again
    <dataset>-p<i>of<N>-<seq:06d>.tar.tmp   the shard a part is writing now
    annotation.json                          the settings fingerprint of the directory
    index.json                               completed shards of all parts + sample count
    summary-<dataset>-p<i>of<N>.json         the last run of each part (see pipeline.py)

Resuming: a shard is written under its ``.tmp`` name and renamed only when it is complete
(``maxcount`` samples, ``maxsize`` bytes, or the end of the run), so the finished samples are
exactly the keys inside the completed ``.tar`` files. Those are read back on start from the tar
headers (a seek per member, no payload is read), which avoids a second source of truth such as a
key sidecar that could disagree with the tar. A killed run leaves at most one ``.tmp`` per part;
the next run of that part deletes it and redoes its samples. Finished keys are collected over
*all* parts, so changing N between runs never duplicates a sample.

Concurrency: each part holds an exclusive ``flock`` on ``.<dataset>-p<i>of<N>.lock`` (a second
process on the same part is refused), and ``index.json`` is rebuilt under ``.index.lock`` from the
files actually present, so parts finishing at the same time cannot corrupt it.

Determinism: tar members carry a fixed mtime, uid/gid, user/group names and mode
(webdataset's ``TarWriter`` arguments) and the JSON is written with sorted keys
(``rsfiqa_core.contract.encode_sample``), so the same inputs give byte-identical shards.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from collections import Counter
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

from webdataset import TarWriter

from annotate.config import AnnotateError
from rsfiqa_core.contract import INDEX_NAME, JSON_KEY, ShardError, write_index
from rsfiqa_core.tars import tar_members
from rsfiqa_core.usererrors import naming_the_file

FINGERPRINT_NAME = "annotation.json"
TMP_SUFFIX = ".tmp"
TAR_MTIME = 0.0
TAR_OWNER = "rsfiqa"
SHARD_RE = re.compile(r"^(?P<prefix>.+-p\d+of\d+)-(?P<seq>\d{6})\.tar$")


class SettingsMismatch(AnnotateError):
    """The output directory was annotated with other settings; mixing them is refused."""


def part_prefix(dataset: str, part: int, nparts: int) -> str:
    """File-name prefix of one part's shards, e.g. ``koniq-p0of4``."""
    return f"{dataset.lower()}-p{part}of{nparts}"


def summary_path(out_dir: Path, dataset: str, part: int, nparts: int) -> Path:
    """Where a part's run summary is saved."""
    return out_dir / f"summary-{part_prefix(dataset, part, nparts)}.json"


# --------------------------------------------------------------------------- reading finished work
def completed_shards(out_dir: Path) -> list[Path]:
    """Completed shard files of every part, sorted by name."""
    return sorted(p for p in out_dir.glob("*.tar") if SHARD_RE.match(p.name))


def shard_keys(path: Path) -> list[str]:
    """Sample keys of one shard in order (member names are ``<key>.<ext>``, keys contain no dot)."""
    keys: list[str] = []
    try:
        for key, _, _ in tar_members(str(path)):
            if not keys or keys[-1] != key:
                keys.append(key)
    except ShardError as e:
        raise ShardError(f"{e}; delete it to have its samples redone") from e
    return keys


def scan_shards(out_dir: Path) -> dict[str, list[str]]:
    """Completed shard name -> its keys, for every part; duplicated keys raise :class:`ShardError`."""
    shards = {p.name: shard_keys(p) for p in completed_shards(out_dir)}
    counts = Counter(k for keys in shards.values() for k in keys)
    duplicated = sorted(k for k, n in counts.items() if n > 1)
    if duplicated:
        where = sorted(name for name, keys in shards.items() if set(keys) & set(duplicated))
        raise ShardError(f"{out_dir}: {len(duplicated)} key(s) stored more than once (e.g. {duplicated[0]}) "
                         f"in {where[:6]}; were two part layouts run at the same time?")
    return shards


def stored_records(out_dir: Path, keys: set[str]) -> dict[str, dict[str, Any]]:
    """The JSON records of ``keys`` in the completed shards (only the small JSON members are read)."""
    records: dict[str, dict[str, Any]] = {}
    if not keys:
        return records
    for path in completed_shards(out_dir):
        for key, ext, read in tar_members(str(path)):
            if ext == JSON_KEY and key in keys:
                try:
                    records[key] = json.loads(read())
                except ValueError as e:
                    raise ShardError(f"{path}:{key}: unreadable JSON record ({e}); delete the shard to have its "
                                     f"samples redone") from e
    return records


def drop_samples(out_dir: Path, keys: set[str]) -> list[Path]:
    """Rewrite every completed shard holding any of ``keys`` without them (same member bytes and tar
    settings, written under a temp name and renamed); a shard left empty is deleted. Returns the
    shards changed. Used to redo samples whose inputs changed; run it under the part's lock."""
    changed: list[Path] = []
    for path in completed_shards(out_dir) if keys else []:
        if keys.isdisjoint(shard_keys(path)):
            continue
        members = [(key, ext, read()) for key, ext, read in tar_members(str(path))]
        changed.append(path)
        samples: dict[str, dict[str, bytes]] = {}
        for key, ext, data in members:
            if key not in keys:
                samples.setdefault(key, {})[ext] = data
        if not samples:
            path.unlink()
            continue
        temp = path.with_name(f".{path.name}.rewrite{TMP_SUFFIX}")
        with naming_the_file(temp), open(temp, "wb") as f:
            with TarWriter(f, user=TAR_OWNER, group=TAR_OWNER, mode=0o444, encoder=False, mtime=TAR_MTIME) as tar:
                for key, sample in samples.items():
                    tar.write({"__key__": key, **sample})
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    if changed:
        _fsync_dir(out_dir)
    return changed


# --------------------------------------------------------------------------- settings fingerprint
def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def claim_settings(out_dir: Path, fingerprint: Mapping[str, Any]) -> None:
    """Record ``fingerprint`` in ``annotation.json``, or check it equals the one already there.

    Creation is atomic and exclusive (temp file + ``os.link``), so parts starting together agree
    on one file. A difference raises :class:`SettingsMismatch` listing the changed settings.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = json.loads(json.dumps(fingerprint, sort_keys=True))
    path = out_dir / FINGERPRINT_NAME
    tmp = out_dir / f".{FINGERPRINT_NAME}.{os.getpid()}{TMP_SUFFIX}"
    tmp.write_text(json.dumps(wanted, indent=1, sort_keys=True))
    try:
        with suppress(FileExistsError):  # another run (part) created it first: compare with that one
            os.link(tmp, path)
    finally:
        tmp.unlink()
    stored = json.loads(path.read_text())
    if stored == wanted:
        return
    old, new = _flatten(stored), _flatten(wanted)
    changes = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
               for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    raise SettingsMismatch(
        f"{out_dir} holds shards annotated with other settings ({'; '.join(changes[:6])}"
        f"{'; ...' if len(changes) > 6 else ''}); refusing to mix them: use another --out, "
        f"or --force-new to delete the existing shards")


def discard_outputs(out_dir: Path) -> list[Path]:
    """Delete what earlier runs wrote into ``out_dir`` (shards, temp files, json files); returns them.

    Only files the annotator names are removed; run it while no other part is writing there.
    """
    doomed = [*completed_shards(out_dir), *out_dir.glob(f"*.tar{TMP_SUFFIX}"), *out_dir.glob("summary-*.json"),
              out_dir / INDEX_NAME, out_dir / FINGERPRINT_NAME]
    removed = [p for p in doomed if p.is_file()]
    for p in removed:
        p.unlink()
    return removed


# --------------------------------------------------------------------------- locks and index
@contextmanager
def _flock(path: Path, blocking: bool) -> Iterator[bool]:
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def part_lock(out_dir: Path, prefix: str) -> Iterator[None]:
    """Hold the part's lock for the run; a second process on the same part gets :class:`ShardError`."""
    lock = out_dir / f".{prefix}.lock"
    with _flock(lock, blocking=False) as acquired:
        if not acquired:
            raise ShardError(f"{out_dir}: part {prefix} is being annotated by another process (lock {lock.name})")
        yield


def rebuild_index(out_dir: Path, dataset: str, annotator: Mapping[str, Any]) -> dict[str, list[str]]:
    """Rewrite ``index.json`` from the completed shards of all parts; returns the scanned shards."""
    with _flock(out_dir / ".index.lock", blocking=True):
        shards = scan_shards(out_dir)
        write_index(out_dir, shards, sum(len(k) for k in shards.values()), dataset, annotator,
                    shard_counts={name: len(keys) for name, keys in shards.items()})
    return shards


# --------------------------------------------------------------------------- writing
class PartShardWriter:
    """Writes one part's samples into ``<prefix>-<seq>.tar`` shards, each renamed when complete.

    ``write`` takes a sample dict of bytes (``rsfiqa_core.contract.encode_sample``). Leaving the
    ``with`` block normally completes the last shard; leaving it through an exception deletes the
    unfinished shard (its samples are redone on the next run).
    """

    def __init__(self, out_dir: Path, prefix: str, maxcount: int, maxsize: int):
        self.out_dir, self.prefix = Path(out_dir), prefix
        self.maxcount, self.maxsize = maxcount, maxsize
        self.completed: list[Path] = []
        self._seq = self._next_seq()
        self._file: BinaryIO | None = None
        self._tar: TarWriter | None = None
        self._count = self._size = 0

    def _next_seq(self) -> int:
        seqs = [int(m["seq"]) for p in completed_shards(self.out_dir)
                if (m := SHARD_RE.match(p.name)) and m["prefix"] == self.prefix]
        return max(seqs, default=-1) + 1

    def discard_temp_files(self) -> list[Path]:
        """Delete this part's unfinished shards left by a killed run."""
        stale = sorted(self.out_dir.glob(f"{self.prefix}-*.tar{TMP_SUFFIX}"))
        for p in stale:
            p.unlink()
        return stale

    def _final_path(self) -> Path:
        return self.out_dir / f"{self.prefix}-{self._seq:06d}.tar"

    def _temp_path(self) -> Path:
        return self.out_dir / f"{self._final_path().name}{TMP_SUFFIX}"

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample; completes the shard once it holds ``maxcount`` samples or ``maxsize`` bytes.
        An ``OSError`` (a full disk) names the shard file."""
        with naming_the_file(self._temp_path()):
            if self._tar is None:
                self._file = open(self._temp_path(), "wb")
                self._tar = TarWriter(self._file, user=TAR_OWNER, group=TAR_OWNER, mode=0o444,
                                      encoder=False, mtime=TAR_MTIME)
            self._size += self._tar.write(dict(sample))
            self._count += 1
            if self._count >= self.maxcount or self._size >= self.maxsize:
                self.finish_shard()

    def finish_shard(self) -> None:
        """Close, fsync and atomically rename the shard being written (no-op when none is open)."""
        if self._tar is None or self._file is None:
            return
        with naming_the_file(self._temp_path()):
            self._seal()

    def _seal(self) -> None:
        assert self._tar is not None and self._file is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._final_path()
        os.replace(self._temp_path(), final)
        _fsync_dir(self.out_dir)
        self.completed.append(final)
        self._tar = self._file = None
        self._count = self._size = 0
        self._seq += 1

    def abort(self) -> None:
        """Drop the unfinished shard."""
        if self._file is not None:
            # closing flushes: on a full disk that fails too, and the file goes anyway. The tar is closed
            # first, so its end-of-archive blocks are not written later, by its finaliser, to a closed file.
            for closable in (self._tar, self._file):
                with suppress(OSError, ValueError):
                    closable.close()
            self._temp_path().unlink(missing_ok=True)
        self._tar = self._file = None
        self._count = self._size = 0

    def __enter__(self) -> "PartShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish_shard()
        else:
            self.abort()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
