"""CMD (Yu et al., ICLR 2024): content-frame motion-latent decomposition, one concept per file."""
