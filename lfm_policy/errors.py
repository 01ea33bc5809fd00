"""Exception types. The CLI prints any :class:`LfmPolicyError` as one line and exits non-zero."""


class LfmPolicyError(Exception):
    """Base class of the errors this package raises on bad input. Messages name file/key/field."""


class DataError(LfmPolicyError, ValueError):
    """A dataset file is missing, corrupt or inconsistent (message names file, episode and key)."""


class CheckpointError(LfmPolicyError, ValueError):
    """A checkpoint is missing, corrupt or does not match what it is used with."""
