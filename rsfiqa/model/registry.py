"""The architectures a config can name (``model.net.arch``), as timm's ``register_model`` or
segment-anything's ``sam_model_registry``: a name -> (its config dataclass, its network).

A new architecture is one module (a frozen config dataclass with ``arch``, ``backbone_names``,
``consumes``, ``closed_form`` and ``frozen_parts()``; a network taking it, with ``backbones``,
``forward_features``, ``forward`` and ``param_groups``) plus one line in :data:`ARCHS`. The rest
of rsfiqa asks the config (what the network reads, whether it has a closed-form step, which parts
are frozen) instead of testing options.

``model.net`` is parsed as :class:`NetOptions`: ``arch`` plus every option of every architecture;
an option that only some architectures have defaults to ``None`` (unset: the architecture's
default), and setting it for an architecture that does not have it is an error. Checkpoints and shipped files written before the registry record no
``arch`` (``global_stats: true`` meant ``stats``); :func:`config_from_hparams` maps them, the one
place that knows the old layouts.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, field, fields, make_dataclass
from typing import Any, Mapping, Optional, Union, get_type_hints

from .net import NetConfig, RSFIQANet
from .stats import StatsConfig, StatsNet

ARCHS: dict[str, tuple[type, type]] = {
    NetConfig.arch: (NetConfig, RSFIQANet),
    StatsConfig.arch: (StatsConfig, StatsNet),
}
DEFAULT_ARCH = NetConfig.arch
ArchConfig = Union[tuple(config for config, _ in ARCHS.values())]
QualityNet = Union[tuple(net for _, net in ARCHS.values())]
LEGACY_STATS_FLAG = "global_stats"  # before the registry: the statistics model was RSFIQANet(global_stats=True)


def option_types() -> dict[str, Any]:
    """Every option of every architecture -> its type (architectures sharing an option agree on it)."""
    types: dict[str, Any] = {}
    for config_class, _ in ARCHS.values():
        types.update(get_type_hints(config_class))
    return {name: t for name, t in types.items() if name != "arch"}


def option_default(name: str) -> Any:
    """The default an option shows in ``model.net``: the architectures' common default when every one has
    the option with the same default, else None (unset: the chosen architecture's default)."""
    defaults = [{f.name: f.default for f in fields(config_class)}.get(name, MISSING)
                for config_class, _ in ARCHS.values()]
    return defaults[0] if MISSING not in defaults and all(d == defaults[0] for d in defaults) else None


NetOptions = make_dataclass(
    "NetOptions", [("arch", str, field(default=DEFAULT_ARCH))]
    + [(name, Optional[t], field(default=option_default(name))) for name, t in option_types().items()],
    frozen=True)
NetOptions.__module__ = __name__
NetOptions.__doc__ = ("``model.net`` as a config file sets it: ``arch`` (one of :data:`ARCHS`) and that "
                      "architecture's options; None = its default.")


def arch_names() -> str:
    return ", ".join(sorted(ARCHS))


def make_config(arch: str, options: Mapping[str, Any]) -> ArchConfig:
    """The config of architecture ``arch`` from ``options`` (None values take its defaults); an error
    naming the options it does not have."""
    if arch not in ARCHS:
        raise ValueError(f"model.net.arch={arch!r} is not a registered architecture (one of {arch_names()})")
    config_class = ARCHS[arch][0]
    known = {f.name for f in fields(config_class)}
    set_options = {k: v for k, v in options.items() if v is not None and k != "arch"}
    foreign = sorted(set(set_options) - known)
    if foreign:
        raise ValueError(f"model.net: {', '.join(foreign)} {'is not an option' if len(foreign) == 1 else 'are not options'}"
                         f" of arch {arch!r} (its options: {', '.join(sorted(known))})")
    return config_class(**set_options)


def as_config(net: Any) -> ArchConfig:
    """An architecture config from a config, :class:`NetOptions`, or a mapping of options (with ``arch``)."""
    if isinstance(net, ArchConfig.__args__):
        return net
    options = asdict(net) if isinstance(net, NetOptions) else dict(net)
    return make_config(options.get("arch") or DEFAULT_ARCH, options)


def config_record(config: ArchConfig) -> dict[str, Any]:
    """What a checkpoint stores under ``hyper_parameters["net"]``: ``arch`` and the options (plain data)."""
    return {"arch": config.arch, **asdict(config)}


def options_record(config: ArchConfig) -> dict[str, Any]:
    """:class:`NetOptions` of a config as a plain dict: its options, the other architectures' unset."""
    return {**{f.name: None for f in fields(NetOptions)}, **config_record(config)}


def config_from_hparams(hparams: Mapping[str, Any], **changes: Any) -> ArchConfig:
    """The config in a checkpoint's ``hyper_parameters``: ``hparams["net"]`` (with ``arch``, or in the
    layout before the registry), or flat in checkpoints written before ``net``. ``changes`` replace
    the options the architecture has (``pretrained=None`` ...) and are ignored by the others."""
    nested = "net" in hparams
    net = hparams["net"] if nested else hparams
    # before the registry (no arch): one option set for both models, the other model's options at defaults
    arch = net.get("arch") or (StatsConfig.arch if net.get(LEGACY_STATS_FLAG) else NetConfig.arch)
    if nested and "arch" in net:
        options = dict(net)
    else:  # a legacy option set, or flat beside the module's own arguments: the architecture's options
        known = {f.name for f in fields(ARCHS[arch][0])} if arch in ARCHS else set()
        options = {k: v for k, v in net.items() if k in known}
    config = make_config(arch, options)
    known = {f.name for f in fields(config)}
    return type(config)(**{**asdict(config), **{k: v for k, v in changes.items() if k in known}})


def build_net(config: Any) -> QualityNet:
    """The network of a config (:func:`as_config` accepts options too)."""
    config = as_config(config)
    return ARCHS[config.arch][1](config)
