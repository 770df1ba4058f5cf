"""AF-CLIP and miniCLIP for ad, with training."""

__version__ = "0.1.0"
