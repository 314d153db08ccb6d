"""Error types for user mistakes.

The command line turns these into one line on stderr and a non-zero exit, so every message must name
the bad value (file, key, field) and say how to fix it. Anything else that escapes is a bug and keeps
its traceback.
"""

__all__ = ["PipelinesError", "ConfigError", "DataError", "WeightsError"]


class PipelinesError(Exception):
    """Base class: a mistake the user can fix; the message says how."""


class ConfigError(PipelinesError, ValueError):
    """A bad config key, value, option or command-line argument."""


class DataError(PipelinesError, ValueError):
    """A data set that is missing, empty, or not in the expected layout."""


class WeightsError(PipelinesError, ValueError):
    """A weights file that cannot be read or does not fit the model."""
