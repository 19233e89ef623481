"""cmdbench-example-plugin: how a third-party package adds a generator to cmdbench.

cmdbench reads the entry point ``example-pixel-ddim = "cmdbench_example_plugin:register"`` (group
``cmdbench.generators``, see ``pyproject.toml``) and calls :func:`register` with no arguments; it
registers the factory under the generator registry. Nothing heavy is imported until the factory runs.
"""

from __future__ import annotations

__version__ = "0.1.0"


def register() -> None:
    """Register this package's generators with cmdbench (called once per process by cmdbench)."""
    from cmdbench.registry import GENERATORS
    from cmdbench_example_plugin.generator import NAME, build

    GENERATORS.register(NAME, build, description="example plugin: class-conditional pixel-space DDIM "
                                                 "(random Conv3d denoiser, 10 classes, 8x16x16)")
