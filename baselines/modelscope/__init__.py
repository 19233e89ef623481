"""modelscope-t2v: ModelScope text-to-video baseline (see ``generator.py``)."""
