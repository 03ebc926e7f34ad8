"""Building segmenters and describers by name from their registries, and their shard records.

A component's shard record is ``{"name": ..., **config, **provenance, "config": config}``: the
flat keys as every earlier shard has them, plus the constructor config as-is. ``device`` is never
part of a config: a component with ``uses_device`` gets it from :func:`build`'s ``device``.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

# Flat keys that records written before the "config" key held next to the options (provenance).
LEGACY_PROVENANCE = frozenset({"versions", "prompts", "logprob_mode", "level_token_ids", "level_token_problem",
                               "score_breakpoints", "texture_threshold", "size_words", "min_interior", "device",
                               "backend"})


def build(kind: str, registry: Mapping[str, type], config: Mapping[str, Any], device: Any = None) -> Any:
    """``registry[config["name"]](**other keys)``, plus ``device`` for a component that takes one."""
    options = dict(config)
    name = str(options.pop("name", "")).lower()
    if name not in registry:
        raise ValueError(f"unknown {kind} {config.get('name')!r}; choose one of {tuple(registry)}")
    cls = registry[name]
    if device is not None and cls.uses_device:
        options.setdefault("device", str(device))
    return cls(**options)


def component_record(component: Any) -> dict[str, Any]:
    """What the shards record of a built component (see the module docstring)."""
    config = component.config()
    return {"name": component.name, **config, **component.provenance(), "config": config}


def recorded_config(registry: Mapping[str, type], record: Mapping[str, Any]) -> dict[str, Any]:
    """The build config of a recorded component, ``{"name": ..., **config}``."""
    if "config" in record:
        return {"name": record["name"], **record["config"]}
    options = {k: v for k, v in record.items() if k not in LEGACY_PROVENANCE}
    if record.get("name") == "mllm":  # the MLLM describer recorded its backend's options in a block
        backend = dict(record.get("backend") or {})
        options = {**options, **{k: v for k, v in backend.items() if k not in LEGACY_PROVENANCE},
                   "name": backend.get("backend")}
    cls = registry.get(str(options.get("name")))
    params = inspect.signature(cls).parameters if cls is not None else {}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k == "name" or k in params}
    return options
