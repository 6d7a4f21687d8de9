"""Errors of the model layer.  Each carries a stable `code` that the worker
records on a failed job and the service maps to an HTTP status."""


class ModelError(Exception):
    code = "model_error"


class CheckpointError(ModelError, ValueError):
    """A checkpoint file or its metadata is invalid; nothing was loaded."""

    code = "invalid_checkpoint"


class UnknownModelError(ModelError, LookupError):
    code = "unknown_model"
