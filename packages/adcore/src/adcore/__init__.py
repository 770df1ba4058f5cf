"""adcore: the host of the ad anomaly-detection toolkit (plugins import from ``adcore.api``)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
