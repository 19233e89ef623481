"""Shared machinery of the baselines (not a generator): the builder shape a baseline is configured with
(``builder``), checkpoint loading with clear errors (``loading``), the checked ``sample`` entry
(``sampling``), and the classifier-free-guided DDIM loop over per-frame SD VAEs (``text_video``)."""
