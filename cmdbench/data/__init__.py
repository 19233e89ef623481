"""Real video data: datasets and evaluation prompt lists."""
