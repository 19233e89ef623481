"""latte-1: Latte-1 text-to-video transformer baseline (see ``generator.py``)."""
