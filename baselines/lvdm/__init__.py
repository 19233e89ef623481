"""lvdm-t2v: LVDM text-to-video baseline (see ``generator.py``; the 3D UNet is ``unet3d.py``)."""
