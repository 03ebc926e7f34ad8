"""Evaluation protocols of the paper's experiments (Tables 1-6).

``report``    per-dataset metrics (the module's torchmetrics), result files, mean ± std, Markdown tables
``plots``     scatter plots (predicted vs MOS) and training curves (PNG)
``callbacks`` ``TestReport`` (``rsfiqa test`` -> results.csv/.md, predictions, scatter plots) and
              ``TrainingCurves`` (``rsfiqa fit`` -> curves.png)
``splits``    ``rsfiqa splits``: train and test every split of a dataset (Table 1), resumable
``ablate``    ``rsfiqa ablate``: config overlays through the split protocol, one table (Tables 3-6)
"""
