"""User-facing errors: each names the problem and the fix, and maps to an exit code.

The base and the kinds the torch-free runtime raises too (usage, data, output, Ctrl-C) are
``ad_runtime.errors``'s, so one handler prints both; the toolkit adds its own here. The CLI
prints these as one paragraph without a traceback (unless ``AD_DEBUG=1``); anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from ad_runtime.errors import AdError, DataError, Interrupted, OutputError, UsageError

__all__ = [
    "AdError",
    "ConfigError",
    "DataError",
    "Interrupted",
    "OutputError",
    "PluginError",
    "UsageError",
    "WeightsError",
]


class ConfigError(AdError):
    """A config file, section or value is invalid."""


class PluginError(AdError):
    """A plugin is unknown, broken, ambiguous, or cannot do what was asked."""


class WeightsError(AdError):
    """Model weights cannot be found, fetched or loaded."""
