"""cmdbench: benchmarking and evaluation of video diffusion models, built around CMD (ICLR 2024).

Importing this package is cheap: it pulls in no torch model code. Public entry points:

- ``cmdbench.registry``: ``GENERATORS``, ``METRICS``, ``DATASETS`` and ``load_plugins()``;
- ``cmdbench.interfaces``: the ``VideoGenerator`` / ``VideoMetric`` protocols;
- ``cmdbench.cli``: the ``cmdbench`` command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
