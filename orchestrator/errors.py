"""Failures the service turns into gRPC status codes; everything else is INTERNAL."""

from __future__ import annotations

import grpc


class PipelineError(Exception):
    """A request-level failure with the status code the client gets."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(PipelineError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(PipelineError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Overloaded(PipelineError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class InvalidInput(PipelineError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelMissing(PipelineError):
    """Triton does not serve a model the request needs (e.g. `reference` without `detector_reference`):
    retrying cannot help, the repository must be exported with it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The failure that tells the story of a TaskGroup: its first; the others were cancelled by it."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
