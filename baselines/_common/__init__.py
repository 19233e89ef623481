"""Shared machinery of the latent video baselines (not a generator): text tokenisation, checkpoint
loading with clear errors, and the classifier-free-guided DDIM sampling loop over per-frame SD VAEs."""
