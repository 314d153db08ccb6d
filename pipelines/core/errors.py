"""Error types for user mistakes.

The command line turns these into one line on stderr and a non-zero exit, so every message must name
the bad value (file, key, field) and say how to fix it. Anything else that escapes is a bug and keeps
its traceback.
"""

__all__ = ["PipelinesError", "ConfigError", "DataError", "WeightsError", "one_line"]


class PipelinesError(Exception):
    """Base class: a mistake the user can fix; the message says how."""


class ConfigError(PipelinesError, ValueError):
    """A bad config key, value, option or command-line argument."""


class DataError(PipelinesError, ValueError):
    """A data set that is missing, empty, or not in the expected layout."""


class WeightsError(PipelinesError, ValueError):
    """A weights file that cannot be read or does not fit the model."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line, as the command line prints it.

    DataLoader workers re-raise our errors with the worker's traceback in the message: only its last line
    (the original message) is kept. An exception that is not ours keeps its type name, so a bug reported
    in a job's summary (a tile job goes on past one bad input) still says what broke.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    text = " ".join(text.split())
    return text if isinstance(exc, PipelinesError) else f"{type(exc).__name__}: {text}"
