"""Where ``rsfiqa score`` writes its records (``--out``): CSV, JSON, JSON lines or Parquet by the file's
extension, resumable, one writer at a time.

Formats. ``.csv`` one row per image (:data:`CSV_COLUMNS`, ``regions`` as a JSON column, + ``mos``
with ``--labels``, + ``heatmap`` with ``--heatmap``); ``.jsonl`` one record per line; ``.json`` a
list of records; ``.parquet`` the CSV's columns (``regions`` a JSON string; needs pyarrow). Rows of
CSV, JSON and JSON lines are written and flushed as each image finishes. Parquet cannot be appended
to, so its rows go to the journal ``<out>.partial.jsonl`` as they finish, and the Parquet file is
(re)written from the earlier file and the journal when the run ends (Ctrl-C included); a killed run
leaves the journal, which the next run folds in.

Resume. Beside each output file lives its state ``<out>.state.json``: the settings that shape the
records (model, overrides, columns). A run with an existing ``--out`` scores only the images not yet
in it (matched by the ``image`` column: the path as given on the command line); other settings are
refused, not mixed. An output without its state file (not written by ``rsfiqa score``) is refused
rather than overwritten. A row cut short by a killed run (the file's tail after its last complete
row) is dropped before appending.

Lock. A run holds an exclusive ``fcntl`` lock on the state file until it ends; a second run on the
same ``--out`` is refused with one line. Standard output (no ``--out``) is neither resumed nor locked.
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TextIO

from rsfiqa.inference.scorer import ScoringSetupError
from rsfiqa_core.usererrors import naming_the_file

CSV_COLUMNS = ("image", "score", "score_norm", "scale_dataset", "regions")
OUTPUT_FORMATS = (".csv", ".json", ".jsonl", ".parquet")
STATE_SUFFIX = ".state.json"
JOURNAL_SUFFIX = ".partial.jsonl"
PARQUET_CHUNK = 1024  # rows per Parquet row group when the file is (re)written
TAIL_CHUNK = 65536  # bytes read at a time, from the end, to find a file's last complete line
FLOAT_COLUMNS = ("score", "score_norm", "mos")
WRITTEN_BY = "rsfiqa score"


def output_format(out: str | None) -> str:
    """The ``--out`` extension (``.csv`` for standard output); refused unless one of :data:`OUTPUT_FORMATS`."""
    if out is None:
        return ".csv"
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ScoringSetupError(f"--out {out}: the file name must end in {', '.join(OUTPUT_FORMATS[:-1])} "
                                f"or {OUTPUT_FORMATS[-1]}")
    if suffix == ".parquet":
        import_pyarrow(out)
    return suffix


def import_pyarrow(out: str | Path) -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (the submodule is used through ``pyarrow.parquet``)
    except ImportError:
        raise ScoringSetupError(f"--out {out}: Parquet output needs pyarrow: pip install pyarrow (or "
                                f"pip install 'rsfiqa[ray]'), or choose .csv / .jsonl") from None
    return pyarrow


def output_columns(mos: bool, heatmaps: bool, regions: bool = True) -> tuple[str, ...]:
    """The columns of a run's rows: :data:`CSV_COLUMNS` (``regions`` only when regions were computed),
    then ``mos`` and ``heatmap`` when asked for."""
    return (tuple(c for c in CSV_COLUMNS if regions or c != "regions") + (("mos",) if mos else ())
            + (("heatmap",) if heatmaps else ()))


def table_row(record: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """The CSV/Parquet row of a record: its ``columns``, ``regions`` as JSON text."""
    return {c: json.dumps(record["regions"], ensure_ascii=False) if c == "regions" else record.get(c) for c in columns}


# --------------------------------------------------------------------------- stream writers
class CsvRows:
    """CSV rows on a text stream, each flushed as it is written."""

    def __init__(self, stream: TextIO, columns: Sequence[str], name: str, header: bool = True):
        self.stream, self.columns, self.name = stream, tuple(columns), name
        self.csv = csv.DictWriter(stream, fieldnames=self.columns)
        if header:
            with naming_the_file(name):
                self.csv.writeheader()
                stream.flush()

    def write(self, record: Mapping[str, Any]) -> None:
        with naming_the_file(self.name):
            self.csv.writerow(table_row(record, self.columns))
            self.stream.flush()

    def close(self) -> None:
        """Nothing to finish: every row is complete."""


class JsonLines:
    """One JSON record per line, each flushed as it is written."""

    def __init__(self, stream: TextIO, name: str):
        self.stream, self.name = stream, name

    def write(self, record: Mapping[str, Any]) -> None:
        with naming_the_file(self.name):
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Nothing to finish: every line is complete."""


class JsonList:
    """The elements of one JSON list, each flushed as it is written; :meth:`close` ends the list.
    ``count`` elements are already in the stream (a resumed file cut after its last element)."""

    def __init__(self, stream: TextIO, name: str, count: int = 0, opened: bool = False):
        self.stream, self.name, self.count = stream, name, count
        if not opened:
            with naming_the_file(name):
                stream.write("[")
                stream.flush()

    def write(self, record: Mapping[str, Any]) -> None:
        with naming_the_file(self.name):
            self.stream.write(("," if self.count else "") + "\n" + json.dumps(record, indent=1, ensure_ascii=False))
            self.stream.flush()
        self.count += 1

    def close(self) -> None:
        with naming_the_file(self.name):
            self.stream.write("\n]\n")
            self.stream.flush()


# --------------------------------------------------------------------------- reading back (resume)
def cut_unfinished_line(path: Path) -> None:
    """Drop what a killed run left after the file's last newline (a row cut short); read from the end."""
    with open(path, "r+b") as f:
        end = pos = f.seek(0, os.SEEK_END)
        keep = 0
        while pos > 0:
            step = min(TAIL_CHUNK, pos)
            f.seek(pos - step)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                keep = pos - step + newline + 1
                break
            pos -= step
        if keep != end:
            f.truncate(keep)


def images_of_lines(path: Path) -> list[str]:
    """The ``image`` of every complete line of a JSON-lines file (its unfinished tail cut off)."""
    cut_unfinished_line(path)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["image"] for line in f if line.strip()]


def images_of_csv(path: Path) -> list[str]:
    """The ``image`` of every complete row of a CSV file (its unfinished tail cut off)."""
    cut_unfinished_line(path)
    with open(path, newline="", encoding="utf-8") as f:
        return [row["image"] for row in csv.DictReader(f)]


def images_of_json_list(path: Path) -> tuple[list[str], bool]:
    """The ``image`` of every complete element of a (possibly unfinished) JSON list, the file cut after the
    last one; and whether the list is open (its ``[`` written). The list is read whole: for big runs,
    JSON lines, CSV or Parquet read back line by line."""
    text = path.read_text(encoding="utf-8")
    decoder, images = json.JSONDecoder(), []
    start = text.find("[")
    end = pos = start + 1
    while start >= 0:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            element, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        images.append(element["image"])
        end = pos
    with open(path, "r+b") as f:
        f.truncate(len(text[:end].encode("utf-8")))
    return images, start >= 0


def images_of_parquet(path: Path) -> list[str]:
    import pyarrow.parquet as pq
    return pq.read_table(path, columns=["image"]).column("image").to_pylist() if path.exists() else []


# --------------------------------------------------------------------------- state and lock
def state_path(out: Path) -> Path:
    return out.with_name(out.name + STATE_SUFFIX)


def plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as JSON gives them back (tuples become lists), for comparison with a stored state."""
    return json.loads(json.dumps(settings))


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys)


@contextmanager
def claimed(out: Path, settings: Mapping[str, Any]) -> Iterator[bool]:
    """Hold the lock on ``out``'s state file; yields whether ``out`` continues an earlier run (same
    settings) or starts empty. Another run holding the lock, other settings, or an output this
    command did not write are refused."""
    state, settings = state_path(out), plain(settings)
    with naming_the_file(state):
        f = open(state, "a+", encoding="utf-8")
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ScoringSetupError(f"--out {out}: another `rsfiqa score` is writing it (it holds the lock on "
                                    f"{state}); wait for it to end or choose another --out") from None
        f.seek(0)
        text = f.read()
        if text.strip():
            yield continues(out, state, text, settings)
            return
        if out.exists() and out.stat().st_size > 0:
            state.unlink()
            raise ScoringSetupError(f"--out {out}: exists but was not written by `rsfiqa score` (no {state.name} "
                                    f"beside it); delete it or choose another --out")
        with naming_the_file(state):
            f.write(json.dumps({"written_by": WRITTEN_BY, "settings": settings}, indent=1) + "\n")
            f.flush()
        yield False


def continues(out: Path, state: Path, text: str, settings: Mapping[str, Any]) -> bool:
    """Whether ``out`` holds an earlier run's rows with these ``settings``; other settings are refused."""
    try:
        recorded = json.loads(text)["settings"]
    except (ValueError, KeyError, TypeError):
        raise ScoringSetupError(f"--out {out}: its state file {state} is damaged; delete both to start over "
                                f"or choose another --out") from None
    if recorded != settings:
        raise ScoringSetupError(f"--out {out}: was written with other settings ({differences(recorded, settings)}); "
                                f"choose another --out, or delete {out.name} and {state.name} to start over")
    return out.exists() or Path(str(out) + JOURNAL_SUFFIX).exists()


# --------------------------------------------------------------------------- the output
class Output:
    """An open ``--out``: ``done`` (images already in it), :meth:`write` per record, :meth:`close`."""

    def __init__(self, writer: CsvRows | JsonLines | JsonList, done: Iterable[str] = (),
                 finish: Callable[[], None] | None = None):
        self.writer, self.done, self.finish = writer, set(done), finish
        self.count = 0

    def write(self, record: Mapping[str, Any]) -> None:
        self.writer.write(record)
        self.count += 1

    def close(self) -> None:
        self.writer.close()
        if self.finish is not None:
            self.finish()


@contextmanager
def open_output(out: str | None, columns: Sequence[str], settings: Mapping[str, Any]) -> Iterator[Output]:
    """The :class:`Output` of ``--out`` (standard output: CSV, no resume), locked while it is open."""
    if out is None:
        yield Output(CsvRows(sys.stdout, columns, "<stdout>"))
        return
    path, fmt = Path(out), output_format(out)
    with claimed(path, settings) as resuming:
        if fmt == ".parquet":
            yield parquet_output(path, columns, resuming)
            return
        with naming_the_file(path):
            stream = open(path, ("a" if resuming else "w"), newline="", encoding="utf-8")
        with stream:
            if fmt == ".json":
                done, opened = images_of_json_list(path) if resuming else ([], False)
                yield Output(JsonList(stream, out, len(done), opened), done)
            elif fmt == ".jsonl":
                yield Output(JsonLines(stream, out), images_of_lines(path) if resuming else ())
            else:
                done = images_of_csv(path) if resuming else []
                yield Output(CsvRows(stream, columns, out, header=path.stat().st_size == 0), done)


def parquet_output(path: Path, columns: Sequence[str], resuming: bool) -> Output:
    """Rows journalled as JSON lines, the Parquet file rewritten from the old file + journal at close."""
    journal = Path(str(path) + JOURNAL_SUFFIX)
    done = (images_of_parquet(path) + (images_of_lines(journal) if journal.exists() else [])) if resuming else []
    if not resuming:
        journal.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    with naming_the_file(journal):
        stream = open(journal, "a", encoding="utf-8")

    def finish() -> None:
        stream.close()
        write_parquet(path, journal, columns)

    return Output(JsonLines(stream, str(journal)), done, finish)


def parquet_schema(columns: Sequence[str]) -> Any:
    import pyarrow as pa
    return pa.schema([(c, pa.float64() if c in FLOAT_COLUMNS else pa.string()) for c in columns])


def write_parquet(path: Path, journal: Path, columns: Sequence[str]) -> None:
    """``path`` = its earlier rows + the journal's, written to a temporary file then renamed; the
    journal is removed once the file is in place."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema, temporary = parquet_schema(columns), path.with_name(path.name + ".tmp")
    with naming_the_file(temporary), pq.ParquetWriter(temporary, schema) as writer:
        if path.exists():
            for batch in pq.ParquetFile(path).iter_batches(PARQUET_CHUNK):
                writer.write_batch(batch)
        cut_unfinished_line(journal)
        with open(journal, encoding="utf-8") as lines:
            rows: list[dict[str, Any]] = []
            for line in lines:
                rows.append(table_row(json.loads(line), columns))
                if len(rows) == PARQUET_CHUNK:
                    writer.write_table(pa.Table.from_pylist(rows, schema))
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema))
    os.replace(temporary, path)
    journal.unlink()
