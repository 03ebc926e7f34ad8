"""The one rule for user errors in the three commands (``rsfiqa``, ``rsfiqa score``, ``python -m annotate``).

A mistake a user can make and fix (a missing file, a malformed config, a full disk, Ctrl-C) ends the
command with ONE line on stderr, ``<prog>: error: <file or value>: <problem>; <fix>``, and the
command's documented exit status; ``--debug`` anywhere on the command line shows the traceback
instead. Errors outside the ``expected`` classes are bugs and keep their traceback.
"""
from __future__ import annotations

import errno
import logging
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

DEBUG_FLAG = "--debug"
EXIT_INTERRUPTED = 130  # the shell's status for SIGINT
WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"  # torch's re-raise of a DataLoader worker error


class SettingError(ValueError):
    """A setting (option or config value) outside its range; the message names it and the fix."""


def can_create_files(folder: str | Path) -> bool:
    """Whether a file can be created in ``folder`` (tried: permissions alone miss read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_output_folder(option: str, folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) and check a file can be written there, before any work;
    a :class:`SettingError` naming ``option`` otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SettingError(f"{option} {folder}: cannot be created ({err.strerror}); choose another folder") from err
    if not can_create_files(folder):
        raise SettingError(f"{option} {folder}: is not writable; choose another folder")
    return folder


def pop_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether it was there."""
    rest = [a for a in argv if a != DEBUG_FLAG]
    return rest, len(rest) != len(argv)


def one_line(err: BaseException) -> str:
    """The error's message on one line; an ``OSError`` names its file and a full disk says so."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename is not None else ""
        hint = "; free space there or choose another folder" if err.errno == errno.ENOSPC else ""
        text = f"{where}{err.strerror}{hint}"
    else:
        text = str(err) or type(err).__name__
    if WORKER_TRACEBACK in text:  # re-raised from a DataLoader worker: its own message ends the traceback
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


@contextmanager
def warnings_as_lines(prog: str, loggers: Sequence[str] = ("rsfiqa", "annotate")) -> Iterator[None]:
    """While it lasts, the warnings of ``loggers`` are one ``<prog>: warning: ...`` line each on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: warning: %(message)s"))
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    try:
        yield
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)


def run_reporting(prog: str, action: Callable[[], int], expected: tuple[type[BaseException], ...], status: int,
                  debug: bool, on_interrupt: str) -> int:
    """``action()``; an ``expected`` error becomes one line and ``status``, Ctrl-C one line and 130
    (``on_interrupt`` says what was kept and how to go on). With ``debug`` both are re-raised."""
    try:
        return action()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted; {on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except expected as err:
        if debug:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return status


@contextmanager
def naming_the_file(path: str | Path) -> Iterator[None]:
    """Re-raise an ``OSError`` without a file name (a write hitting a full disk) with ``path`` as its file."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err
