"""pvdm-ucf101: PVDM triplane latent video diffusion baseline (see ``generator.py``)."""
