"""Small shared utilities: Hydra config location, checkpoints, tiled inference, run files."""
