"""``rsfiqa models``: the registered shipped models, what they were trained on and how well they score."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rsfiqa.inference import pretrained
from rsfiqa.model import registry


def reads(config: registry.ArchConfig) -> str:
    """What the model's score reads: the image, and the annotator's regions or texts if it uses them."""
    return " + ".join(["image", *(f"region {part}" if part == "texts" else part for part in sorted(config.consumes))]) + \
        ("" if config.consumes else " only (scoring annotates only for --regions/--report/--heatmap)")


def describe(entry: pretrained.ModelEntry) -> list[str]:
    """Lines about one registered model, read from its file (or why it cannot be read)."""
    default = " (default)" if entry.name == pretrained.DEFAULT_MODEL else ""
    lines = [f"{entry.name}{default}: {entry.summary}"]
    try:
        content = pretrained.read_model_file(entry.path, entry.name)
    except pretrained.PretrainedError as err:
        return lines + [f"  unavailable: {err}"]
    card, config = content["card"], registry.config_from_hparams(content["hyper_parameters"])
    data, val, demo = card.get("training_data", {}), card.get("validation", {}), card.get("demo", {})
    lines += [f"  file: {entry.path} ({entry.path.stat().st_size / 1e6:.2f} MB), created {card.get('created')}",
              f"  trained on: {data.get('source')} ({data.get('photos')} photos, {data.get('split')})",
              f"  architecture: {config.arch}; reads: {reads(config)}",
              f"  backbones: {' + '.join(config.backbone_names)}; weight packages: "
              + ", ".join(f"{n} {v}" for n, v in content["packages"].items())]
    if val:
        lines.append(f"  validation: PLCC {val['plcc']:.3f}  SRCC {val['srcc']:.3f}")
    if demo:
        lines.append(f"  {demo['n']} demo photos (never trained on): PLCC {demo['plcc']:.3f}  SRCC {demo['srcc']:.3f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="rsfiqa models", description=__doc__).parse_args(argv)
    for entry in pretrained.MODELS.values():
        print("\n".join(describe(entry)))
    print("\nUse: rsfiqa score PHOTOS [--model NAME]   Python: Scorer.from_pretrained(NAME)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
