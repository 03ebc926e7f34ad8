"""Annotation settings: OmegaConf YAML files plus command-line ``key=value`` overrides.

A config has these top-level keys (``configs/annotate/offline.yaml`` documents each one):

* ``num_regions`` — L, the regions per image (paper eq. 5; default 5). It is handed to the
  segmenter, so ``segmenter`` must not set a different one.
* ``segmenter`` / ``describer`` — options passed to ``build_segmenter`` / ``build_describer``.
* ``batch_size`` — images per describer batch.
* ``shards`` — ``maxcount`` samples and ``maxsize`` bytes per shard.
* ``image`` — ``max_pixels`` (decompression-bomb guard) and ``downscale_long_side``: ``null``
  annotates at full resolution; a number annotates a copy whose long side is at most that many
  pixels (SPAQ's phone photos). The shard always keeps the original file bytes, and the label map
  is scaled back (nearest neighbour) to the original resolution, as the contract requires.
* ``dataset`` — options of the dataset adapter (e.g. the csv adapter's ``csv``, ``score_col``).

Values the user must provide are ``???`` in the YAML (OmegaConf's "missing"); a run with one
still unset stops with a :class:`ConfigError` naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "annotate" / "offline.yaml"

DEFAULTS: dict[str, Any] = {
    "num_regions": 5,
    "segmenter": {"name": "classical"},
    "describer": {"name": "measures"},
    "batch_size": 8,
    "shards": {"maxcount": 256, "maxsize": 3_000_000_000},
    "image": {"max_pixels": 120_000_000, "downscale_long_side": None},
    "dataset": {},
}


class AnnotateError(Exception):
    """An expected failure of an annotation run; the CLI prints its message without a traceback."""


class ConfigError(AnnotateError):
    """A config file or override that cannot be used."""


def resolve_config_path(path: str | Path | None) -> Path:
    """The config file to read: ``path`` as given, else relative to the repository, else the default."""
    if path is None:
        return DEFAULT_CONFIG
    path = Path(path)
    candidates = dict.fromkeys([path.resolve(), (REPO_ROOT / path).resolve()])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {path} (looked for {', '.join(map(str, candidates))})")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """:data:`DEFAULTS` <- the YAML file <- dotlist ``overrides`` (``segmenter.name=sam``), checked."""
    file = resolve_config_path(path)
    try:
        cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.load(file),
                              OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as e:
        problem = " ".join(str(e).split())
        raise ConfigError(f"{file}: cannot read config or overrides {list(overrides)}: {problem}; fix the YAML "
                          f"syntax (key: value, one per line; overrides as key=value)") from e
    check_config(cfg, str(file))
    return cfg


def check_config(cfg: DictConfig, where: str = "config") -> None:
    """Raise :class:`ConfigError` for unknown top-level keys, unset ``???`` values and bad sizes."""
    unknown = sorted(set(cfg.keys()) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(f"{where}: required value(s) not set: {', '.join(missing)} "
                          f"(set them in the YAML or on the command line: {example})")
    for key in ("num_regions", "batch_size", "shards.maxcount", "shards.maxsize"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    if cfg.num_regions < 2:
        raise ConfigError(f"{where}: num_regions must be at least 2 (regions + background), got {cfg.num_regions}")
    seg_l = cfg.segmenter.get("num_regions")
    if seg_l is not None and seg_l != cfg.num_regions:
        raise ConfigError(f"{where}: segmenter.num_regions={seg_l} contradicts num_regions={cfg.num_regions}; "
                          f"set num_regions only")
    long_side = cfg.image.downscale_long_side
    if long_side is not None and (not isinstance(long_side, int) or long_side < 16):
        raise ConfigError(f"{where}: image.downscale_long_side must be null or an integer >= 16, got {long_side!r}")


def section(cfg: DictConfig, name: str) -> dict[str, Any]:
    """A config section as a plain dict (interpolations resolved)."""
    return OmegaConf.to_container(cfg[name], resolve=True)  # type: ignore[return-value]
