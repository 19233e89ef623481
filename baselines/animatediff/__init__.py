"""animatediff-v152: SD 1.5 + AnimateDiff motion adapter v1-5-2 baseline (see ``generator.py``)."""
