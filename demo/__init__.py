"""The RSFIQA demo (``make demo`` / ``python -m demo``): the whole pipeline on 48 real CLIVE photos.

Four steps, each through the project's own entry points, then a summary:

1. **annotate** ``demo/data`` with the offline annotator (``python -m annotate``: classical
   segmenter, eq. 5, and the signal-measure describer) into ``OUT/shards``; resumable, so a rerun
   reuses the finished shards;
2. **train** on split ``seed0`` (``rsfiqa fit --config configs/cpu.yaml --config configs/demo.yaml``);
3. **test** the best checkpoint (highest validation SRCC) on the split's test photos (``rsfiqa
   test``): PLCC, SRCC, KRCC, RMSE, ``results.csv``/``results.md`` and a scatter plot;
4. **score** every photo end to end (``rsfiqa score``): ``scores.csv`` and one heatmap PNG each.

A step that fails stops the demo with a message naming it (exit status 1). ``--quick`` runs the
same steps on 12 photos with a tiny input size and one epoch (what the test suite checks).
"""
from demo.cli import main

__all__ = ["main"]
