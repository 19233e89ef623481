"""tiny-unet3d: the random-weight reference miniature generator (see ``generator.py``)."""
