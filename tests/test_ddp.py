"""Two-process DDP training on CPU (gloo): every rank runs the same number of batches per epoch
although the shards hold uneven numbers of training samples (otherwise DDP hangs)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from pathlib import Path

from rsfiqa.data.shards import load_shard_set
from shardgen import write_shards

pytestmark = pytest.mark.slow  # end to end: DDP processes

REPO = Path(__file__).resolve().parents[1]
WORLD, BATCH = 2, 2

SCRIPT = textwrap.dedent('''
    import json, sys
    from collections import Counter
    from pathlib import Path

    import torch
    from lightning.pytorch import Callback, Trainer

    from rsfiqa.data.datamodule import ShardDataModule
    from rsfiqa.model.net import NetConfig
    from rsfiqa.module import RSFIQAModule


    class BatchCounter(Callback):
        """Per rank: train batches per epoch, train keys seen, validation batches."""

        def __init__(self, out):
            self.out, self.train, self.val, self.keys = Path(out), Counter(), Counter(), []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.train[trainer.current_epoch] += 1
            self.keys += batch["key"]

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                self.val[trainer.current_epoch] += 1

        def on_train_end(self, trainer, pl_module):
            report = {"world": trainer.world_size, "train": self.train, "val": self.val, "keys": self.keys,
                      "val_srcc": float(trainer.callback_metrics["val/srcc"])}
            (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


    if __name__ == "__main__":
        shards, out, world, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        torch.set_num_threads(1)
        model = RSFIQAModule(NetConfig(backbone="test_efficientnet", embed_dim=16, num_heads=2,
                                       text_encoder="minilm"))
        data = ShardDataModule(train_shards=shards, image_size=32, batch_size=batch, num_workers=0)
        trainer = Trainer(accelerator="cpu", devices=world, strategy="ddp", max_epochs=2, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=out, callbacks=[BatchCounter(out)])
        trainer.fit(model, data)
''')


def test_ddp_ranks_run_equal_batch_counts_on_uneven_shards(tmp_path):
    shards = write_shards(tmp_path / "shards", 17, image_size=(32, 40), samples_per_shard=5)  # 5, 5, 5, 2
    shard_set = load_shard_set(str(shards))
    train_per_rank = [shard_set.split_count("seed0", "train", shard_set.urls[r::WORLD]) for r in range(WORLD)]
    assert train_per_rank[0] != train_per_rank[1], "the shards must be uneven across ranks to test anything"

    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(shards), str(tmp_path), str(WORLD), str(BATCH)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    expected = math.ceil(sum(train_per_rank) / (WORLD * BATCH))
    n_val = shard_set.split_count("seed0", "val")
    for report in reports:
        assert report["world"] == WORLD
        assert report["train"] == {"0": expected, "1": expected}
        assert report["val"] == {"0": math.ceil(n_val / BATCH), "1": math.ceil(n_val / BATCH)}
    train_keys = {info.key for _, info in shard_set.samples() if info.splits["seed0"] == "train"}
    seen = [set(report["keys"]) for report in reports]
    assert seen[0] <= train_keys and seen[1] <= train_keys
    assert not seen[0] & seen[1], "ranks read disjoint shards"
    assert reports[0]["val_srcc"] == reports[1]["val_srcc"], "every rank evaluates the whole validation set"
