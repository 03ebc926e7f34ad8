"""Every registered segmenter and describer rebuilds from the config its shard record holds, and
records written before the ``config`` key existed still rebuild."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from annotate.api import REGISTRIES
from annotate.registry import build, component_record, recorded_config
from annotate.segment.sam import tiny_sam


def tiny_sam_config(tmp_path: Path, monkeypatch: Any) -> dict[str, Any]:
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), path)
    return {"name": "sam", "checkpoint": str(path), "model_type": "tiny", "num_regions": 4, "points_per_side": 4,
            "device": "cpu"}


def stubbed_vllm_config(tmp_path: Path, monkeypatch: Any) -> dict[str, Any]:
    from test_mllm import stub_vllm

    stub_vllm(monkeypatch, with_token_ids=True)
    return {"name": "vllm", "model": "/models/qwen", "max_retries": 1, "max_model_len": 2048}


def tiny_qwen_config(tmp_path: Path, monkeypatch: Any) -> dict[str, Any]:
    from test_mllm import tiny_processor, tiny_qwen

    processor = tiny_processor()
    tiny_qwen(processor).save_pretrained(tmp_path / "qwen")
    processor.save_pretrained(tmp_path / "qwen")
    return {"name": "hf", "model": str(tmp_path / "qwen"), "batch_size": 2, "device": "cpu"}


# (kind, name) -> a config that builds that component on this machine (a registered name without one fails)
CONFIGS: dict[tuple[str, str], Callable[[Path, Any], dict[str, Any]]] = {
    ("segmenter", "classical"): lambda tmp_path, mp: {"name": "classical", "num_regions": 4, "method": "felzenszwalb"},
    ("segmenter", "sam"): tiny_sam_config,
    ("describer", "measures"): lambda tmp_path, mp: {"name": "measures", "max_colour_samples": 512},
    ("describer", "vllm"): stubbed_vllm_config,
    ("describer", "hf"): tiny_qwen_config,
}
REGISTERED = [pytest.param(kind, name, marks=[pytest.mark.slow] if name == "hf" else [])
              for kind, registry in REGISTRIES.items() for name in registry]


@pytest.mark.parametrize("kind, name", REGISTERED)
def test_every_registered_component_rebuilds_from_its_recorded_config(kind, name, tmp_path, monkeypatch):
    assert (kind, name) in CONFIGS, f"add a buildable config for the {kind} {name!r} to CONFIGS"
    registry = REGISTRIES[kind]
    component = build(kind, registry, CONFIGS[kind, name](tmp_path, monkeypatch))
    record = json.loads(json.dumps(component_record(component)))  # as the shards store it
    assert record["name"] == name and "device" not in record["config"]
    rebuilt = build(kind, registry, recorded_config(registry, record), device="cpu")
    assert type(rebuilt) is type(component) and rebuilt.config() == component.config()
    assert component_record(rebuilt) == record


def test_records_without_a_config_key_still_rebuild():
    classical = {"name": "classical", "num_regions": 5, "method": "slic", "long_side": 512, "num_candidates": 12,
                 "n_segments": 200, "compactness": 10.0, "fz_scale": 100.0, "fz_sigma": 0.8, "fz_min_size": 0.001,
                 "min_area": 0.02, "colour_scale": 20.0, "versions": {"scikit-image": "0.22"}}
    segmenter = build("segmenter", REGISTRIES["segmenter"], recorded_config(REGISTRIES["segmenter"], classical))
    assert {"name": "classical", **segmenter.config(), "versions": {"scikit-image": "0.22"}} == classical
    measures = {"name": "measures", "score_breakpoints": {}, "texture_threshold": 1.0, "size_words": [],
                "min_interior": 3, "max_colour_samples": 4096}
    assert recorded_config(REGISTRIES["describer"], measures) == {"name": "measures", "max_colour_samples": 4096}
    hf = {"name": "mllm", "max_retries": 1, "prompts": {}, "backend": {"backend": "hf", "model": "/m", "device": "cuda",
                                                                        "batch_size": 4, "level_token_ids": None}}
    assert recorded_config(REGISTRIES["describer"], hf) == {"name": "hf", "max_retries": 1, "model": "/m",
                                                            "batch_size": 4}


def test_a_component_that_takes_a_device_gets_it_from_build_only():
    sam, measures = REGISTRIES["segmenter"]["sam"], REGISTRIES["describer"]["measures"]
    assert sam.uses_device and not measures.uses_device
    assert build("describer", REGISTRIES["describer"], {"name": "measures"}, device="cuda").config() == \
        {"max_colour_samples": 4096}
    with pytest.raises(ValueError, match="unknown segmenter 'watershed'; choose one of"):
        build("segmenter", REGISTRIES["segmenter"], {"name": "watershed"})
