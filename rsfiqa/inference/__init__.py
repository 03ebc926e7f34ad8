"""Scoring new images (the top layer): :mod:`scorer` (Python API), :mod:`score_cli` (``rsfiqa score``),
:mod:`heatmap`. The only part of ``rsfiqa`` that imports ``annotate``, through ``annotate.api``."""
