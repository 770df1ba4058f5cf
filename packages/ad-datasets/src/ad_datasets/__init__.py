"""MVTec-AD, VisA, folder and synthetic data sets for ad."""

__version__ = "0.1.0"
