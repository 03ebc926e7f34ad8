"""Reading a checkpoint file that ``rsfiqa fit`` wrote (resuming, evaluation, scoring).

``rsfiqa fit`` stores ``state_digest`` (:func:`rsfiqa_core.digests.state_digest` of the
``state_dict``) in every checkpoint; reading one verifies it, so weights changed after training
(flipped bytes, a NaN) are named instead of evaluated. Checkpoints written before the digest
existed load unverified.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rsfiqa_core.digests import state_digest

DIGEST_KEY = "state_digest"


class CheckpointError(ValueError):
    """A checkpoint path that is missing or not a file ``rsfiqa fit`` wrote (message names the file)."""


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, loaded with ``weights_only=True`` (rsfiqa checkpoints hold tensors and plain
    data only); anything else is a :class:`CheckpointError`, never torch's advice to unpickle it anyway."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or corrupt files; all mean "unusable"
        raise CheckpointError(f"{path}: not a readable checkpoint written by `rsfiqa fit` (torch cannot load it: "
                              f"{type(err).__name__}); pass a .ckpt from runs/<name>/version_N/checkpoints/") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint written by `rsfiqa fit` (holds a {type(ckpt).__name__})")
    if DIGEST_KEY in ckpt and state_digest(ckpt.get("state_dict", {})) != ckpt[DIGEST_KEY]:
        raise CheckpointError(f"{path}: its weights do not match the digest written with them (changed or damaged "
                              f"after training); use another checkpoint of the run (an earlier epoch) or train again")
    return ckpt
