"""TensorFlow status codes and the one error type the serving layers exchange.

Every layer (manager, servables, REST, gRPC, codec, batching) raises :class:`ServingError` with a
TF code and upstream's message text; REST turns it into ``{"error": message}`` with the HTTP status
of :data:`HTTP_STATUS`, gRPC into the matching status code. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """``tensorflow::error::Code`` (identical numbering to gRPC status codes)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# HTTP status for a TF code, as upstream's REST handler maps them (ToHTTPStatusCode).
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A failed serving operation: a TF status code plus upstream's message text."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def __str__(self) -> str:
        """``CODE: message`` like ``absl::Status::ToString``."""
        return f"{self.code.name}: {self.message}"


ECHO_CHARS = 128
"""The longest client-supplied text (model name, label, signature, alias, path) an error message
repeats whole; longer text is shortened by :func:`shown`."""
MAX_MESSAGE_BYTES = 4096
"""The most UTF-8 bytes of an error message sent to a client (:func:`bounded`): gRPC sends the
message percent-encoded in a trailer (up to 3x its UTF-8 size) and clients refuse trailers over
their metadata limit (16 KB), reporting RESOURCE_EXHAUSTED instead of the error."""


def shown(text: str, limit: int = ECHO_CHARS) -> str:
    """Client-supplied ``text`` as an error message repeats it: unchanged up to ``limit``
    characters (upstream's texts stay byte-identical), else its start, an ellipsis and the
    original length: ``'aaaa…' (50000 characters)``. Use it wherever a message echoes input."""
    if len(text) <= limit:
        return text
    return f"'{text[:limit]}…' ({len(text)} characters)"


def bounded(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """An error message as a client receives it: at most ``limit`` UTF-8 bytes plus a note of the
    original length (a safety net for texts that join many names or come from TensorFlow)."""
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return message
    start = data[:limit].decode("utf-8", "ignore")
    return f"{start}… (message shortened from {len(message)} characters)"


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, message)


def as_serving_error(exc: BaseException) -> ServingError | None:
    """``exc`` as a :class:`ServingError`, also for an error type of the same shape declared by
    another module of this package (``code`` + ``message``); None for anything else."""
    if isinstance(exc, ServingError):
        return exc
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    if type(exc).__name__ == "ServingError" and isinstance(code, int) and isinstance(message, str):
        try:
            return ServingError(Code(int(code)), message)
        except ValueError:
            return ServingError(Code.UNKNOWN, message)
    return None
