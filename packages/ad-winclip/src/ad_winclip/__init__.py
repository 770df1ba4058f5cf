"""WinCLIP and WinCLIP+ for ad, on open_clip."""

__version__ = "0.1.0"
