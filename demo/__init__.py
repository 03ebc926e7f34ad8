"""The RSFIQA demo (``make demo`` / ``python -m demo``): 48 real CLIVE photos, two parts.

**The result.** Step 1 scores the bundled photos with the shipped model (``rsfiqa score``, no
training; the model never saw these photos) and prints its PLCC/SRCC against their MOS, with
``scores.csv``, one heatmap per photo, a scatter plot and an HTML report.

**The pipeline check ("train your own").** Steps 2-4 run the whole training pipeline on the same
photos through the project's own entry points: annotate (``python -m annotate``, offline
annotator), train on split ``seed0`` (``rsfiqa fit --config configs/cpu.yaml --config
configs/demo.yaml``) and test the best checkpoint (``rsfiqa test``). 48 photos are far too few to
train a model: these numbers only show that every step works.

A step that fails stops the demo with a message naming it (exit status 1). ``--quick`` runs the
same steps on 12 photos with a tiny training input size and one epoch (what the test suite checks).
"""
from demo.cli import main

__all__ = ["main"]
