"""Reading the members of a shard's tar file (webdataset layout: ``<key>.<ext>`` per entry)."""
from __future__ import annotations

import tarfile
from typing import Callable, Iterator

from rsfiqa_core.contract import ShardError


def tar_members(path: str, size: int | None = None) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    """(key, extension, read) of every member in order; a member ending past ``size`` bytes or an
    unreadable file raises :class:`ShardError` naming ``path``."""
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if size is not None and member.offset_data + member.size > size:
                    raise ShardError(f"{path}: truncated shard ({member.name} ends past the end of the file)")
                key, _, ext = member.name.partition(".")
                yield key, ext, lambda m=member: tar.extractfile(m).read()
    except (tarfile.TarError, OSError) as err:
        raise ShardError(f"{path}: corrupt or truncated shard ({err})") from err
