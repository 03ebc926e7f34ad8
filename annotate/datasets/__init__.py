"""Dataset adapters of the annotation stage: each reads one dataset's official layout.

``get_adapter("konIQ", **options).load(root) -> (samples, skipped)``; names are case-insensitive.
See ``annotate/datasets/base.py`` for what every adapter checks and records.
"""
from __future__ import annotations

import inspect
from typing import Any

from annotate.datasets.base import DatasetAdapter, DatasetError
from annotate.datasets.clive import CLIVEAdapter
from annotate.datasets.csiq import CSIQAdapter
from annotate.datasets.csv_folder import CSVFolderAdapter
from annotate.datasets.kadid import KADIDAdapter
from annotate.datasets.koniq import KonIQAdapter
from annotate.datasets.live import LIVEAdapter
from annotate.datasets.spaq import SPAQAdapter
from annotate.datasets.tid2013 import TID2013Adapter

ADAPTERS: dict[str, type[DatasetAdapter]] = {cls.name: cls for cls in (
    KonIQAdapter, KADIDAdapter, LIVEAdapter, CSIQAdapter, TID2013Adapter, CLIVEAdapter, SPAQAdapter, CSVFolderAdapter)}

__all__ = ["ADAPTERS", "DatasetAdapter", "DatasetError", "adapter_options", "get_adapter"]


def adapter_options(cls: type[DatasetAdapter]) -> list[str]:
    """The keyword options an adapter class accepts (its own and the shared split/scale ones)."""
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and klass is not object:
            names |= {p.name for p in inspect.signature(init).parameters.values() if p.kind is p.KEYWORD_ONLY}
    return sorted(names)


def get_adapter(name: str, **options: Any) -> DatasetAdapter:
    """The adapter registered as ``name`` (case-insensitive), built with ``options``."""
    cls = ADAPTERS.get(str(name).strip().lower())
    if cls is None:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(ADAPTERS))}")
    unknown = sorted(set(options) - set(adapter_options(cls)))
    if unknown:
        raise TypeError(f"dataset {cls.name!r} has no option(s) {unknown}; its options: {adapter_options(cls)}")
    return cls(**options)
