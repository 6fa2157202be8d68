"""Errors `navig export` reports as a message and an exit code (never a traceback)."""


class ExportError(RuntimeError):
    """An artifact could not be produced or failed its check; the message says which and why."""


class CheckpointError(ExportError):
    """A checkpoint folder is missing files, has the wrong architecture or unsafe weights."""
