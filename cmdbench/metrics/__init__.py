"""Judges: Fréchet distance, I3D/FVD, CLIPSIM and cost measurement. Never imports a contestant."""
