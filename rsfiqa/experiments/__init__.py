"""Protocols run over the ``rsfiqa`` command: 10 random splits, the paper's ablations, RSA probes."""
