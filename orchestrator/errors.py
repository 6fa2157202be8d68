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


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The failure that tells the story of a TaskGroup: its first; the others were cancelled by it."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
