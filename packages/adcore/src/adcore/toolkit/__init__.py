"""What methods use: weights resolver, hub cache, checkpoints, open_clip, kNN, anomaly maps."""
