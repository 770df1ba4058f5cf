"""adcore: the host of the ad anomaly-detection toolkit."""

from adcore.contracts.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
