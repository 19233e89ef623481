"""Baseline video generators. Importing this package registers every baseline in
``cmdbench.registry.GENERATORS`` through the explicit import list below; no weights are loaded at import.
"""

# The explicit list: one import per baseline (each module registers its generator factories).
from baselines.animatediff import generator as _animatediff  # noqa: F401
from baselines.latte import generator as _latte  # noqa: F401
from baselines.lvdm import generator as _lvdm  # noqa: F401
from baselines.modelscope import generator as _modelscope  # noqa: F401
from baselines.pvdm import generator as _pvdm  # noqa: F401
from baselines.tiny_unet3d import generator as _tiny_unet3d  # noqa: F401
