"""One exception family for errors a user can cause.

Widgets show these as napari notifications and the CLI as one line with a non-zero exit. Anything
else that escapes is a bug.
"""


class VesuviusError(Exception):
    """An error the user can fix: the message says what is wrong, where, and what to do."""


class SegmentError(VesuviusError):
    """A segment or fragment on disk cannot be read as asked (paths, shapes, masks, formats)."""


class WeightsError(VesuviusError):
    """A weights or checkpoint file does not fit the model asked for, or is not a weights file."""


class ConfigError(VesuviusError):
    """A run configuration is inconsistent (unknown option, impossible tile size, missing input)."""


class RunError(VesuviusError):
    """A run cannot start or continue (nothing to resume, non-finite loss, out of memory)."""


class AnalysisInputError(VesuviusError, ValueError):
    """Arrays given to a CKA or metric function do not fit (shapes, NaN, too few samples)."""
