"""The diffusers pipeline adapter: ``diffusers:<path-or-id>`` names any diffusers text-to-video pipeline.

Importing this package registers the ``diffusers`` name scheme in ``cmdbench.registry.GENERATORS``
(listed in ``cmdbench.registry.PLUGIN_MODULES``); nothing is loaded until a name is built.
"""

from baselines.diffusers_adapter.generator import (  # noqa: F401
    DiffusersVideoGenerator,
    load_diffusers_generator,
)
