"""Shared fixtures: small synthetic shard directories (written by ``shardgen.write_shards``) and the
arguments of a tiny RSFIQA model that trains in seconds on a CPU."""
from __future__ import annotations

from pathlib import Path

import pytest

from shardgen import write_shards

# timm's 82k-parameter test EfficientNet, random init; MiniLM is the offline (PyPI) text encoder
TINY_MODEL = {"backbone": "test_efficientnet", "pretrained": None, "embed_dim": 32, "num_heads": 2,
              "text_encoder": "minilm", "dropout": 0.0}


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
        args += [f"--model.{key}", "null" if value is None else str(value)]
    return args
