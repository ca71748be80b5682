"""Exceptions that name the culprit: the tensor, the file, the key, the fix."""


class MPQError(Exception):
    """Base of every error mpq-serving raises on bad input."""


class FormatError(MPQError):
    """A weight cannot be put in, or read from, a numeric format (bad shape, NaN, wrong tensors)."""


class UnknownFormatError(FormatError):
    """A format name that is not registered."""


class PlanError(MPQError):
    """A plan is malformed or does not fit the model it is applied to."""


class CheckpointError(MPQError):
    """A checkpoint file is missing, corrupt, or lacks a tensor the plan needs."""
