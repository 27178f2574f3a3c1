"""The error tree. Every error a client can see is a ``RelayError``.

Each class carries the HTTP status and the BossDB error code it renders as; one handler in
``relay.app`` turns any of them into BossDB JSON ``{"status", "code", "message"}``. The codes
are BossDB's, where BossDB has one for the case (a code names a kind of failure, so one may
serve two statuses); no two classes render as the same status and code, except the two that
BossDB itself reports as TYPE_ERROR (1002). tests/test_errors.py holds the tree to this text.

    RelayError (500, 9002)
    ├── BadRequest (400, 1005)
    │   ├── RequestHeadTooLarge (431, 1005)      request line and headers over 64 KiB
    │   ├── RequestTimeout (408, 1005)           no complete request head within header_timeout
    │   ├── InvalidUrl (400, 1000)               bad time range
    │   ├── InvalidCutoutArgs (400, 1001)        out of frame, start >= stop, bad access-mode
    │   ├── InvalidResolution (400, 1002)        resolution outside the channel's levels
    │   ├── CutoutTypeError (400, 1002)          a range that is not two integers
    │   ├── InvalidPostArgument (400, 1003)      a metadata key missing (or, to create, there)
    │   ├── DatatypeMismatch (400, 2001)         JPEG on a non-uint8 channel; a POSTed
    │   │                                        body of another dtype
    │   ├── DataDimensionMismatch (400, 2002)    a POSTed body that does not fit the box
    │   ├── DatatypeNotSupported (400, 2003)     filter= on an image channel
    │   ├── Unsupported4D (400, 2005)            JPEG with a time range
    │   └── UnsupportedVersion (400, 9003)       /v0.x/
    ├── NotFound (404, 2004)                     no such route
    │   ├── ResourceNotFound (404, 4000)         no such collection / experiment / channel / frame
    │   └── ObjectNotFound (404, 4004)           no such id in the channel (bounding box)
    ├── Unauthorized (401, 3004)                 server.tokens is set and the caller has none
    ├── MethodNotAllowed (405, 1006)             TRACE; a write to a source that takes none
    ├── NotAcceptable (406, 1006)                no encoding we can produce matches Accept
    ├── UnsupportedMediaType (415, 1003)         a POSTed body that is not Blosc
    ├── RequestTooLarge (413, 2000)              over server.max_cutout_bytes, or more than the
    │                                            encoding can carry
    ├── Overloaded (503, 9001)                   at a limit: requests, connections, bytes in
    │                                            flight (with Retry-After)
    ├── StateUnavailable (503, 5004)             server.state_dir cannot be read or written
    ├── LoopDetected (508, 5008)                 the request came round a chain of relays
    ├── PassThroughError (any, any)              an upstream relay's own BossDB error, its
    │                                            status and code kept across a chain
    └── UpstreamError (502, 5000)                the upstream failed or sent bad data
        ├── UpstreamUnavailable (503, 5001)      unreachable, or busy (429/503)
        ├── UpstreamTimeout (504, 5002)          no answer within the source's timeout
        └── ConfigError (502, 5003)              the store is not what the source says (the
                                                 message names the source and the fix)
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "ConfigError",
    "CutoutTypeError",
    "DataDimensionMismatch",
    "DatatypeMismatch",
    "DatatypeNotSupported",
    "InvalidCutoutArgs",
    "InvalidPostArgument",
    "InvalidResolution",
    "InvalidUrl",
    "LoopDetected",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFound",
    "ObjectNotFound",
    "Overloaded",
    "PassThroughError",
    "RelayError",
    "RequestHeadTooLarge",
    "RequestTimeout",
    "RequestTooLarge",
    "ResourceNotFound",
    "StateUnavailable",
    "Unauthorized",
    "Unsupported4D",
    "UnsupportedMediaType",
    "UnsupportedVersion",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]

#: Messages echo client input; bound them so a 10 kB name cannot make a 10 kB error.
_MAX_MESSAGE = 300
#: Terminal escape sequences (cloud-volume colours its exceptions) and control characters:
#: never part of a message a client or a log reader sees.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x1f\x7f]+")


class RelayError(Exception):
    # Plain attributes, not ClassVars: an upstream's own error keeps its status and code
    # across a chain (``PassThroughError`` sets them per instance).
    status: int = 500
    code: int = 9002
    default_message: ClassVar[str] = "Internal error"
    #: seconds for a ``Retry-After`` header (errors that mean "not now")
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str | None = None) -> None:
        text = message if message is not None else self.default_message
        text = _ESCAPES.sub(" ", text).strip() if "\x1b" in text or not text.isprintable() \
            else text
        if len(text) > _MAX_MESSAGE:
            text = text[: _MAX_MESSAGE - 3] + "..."
        super().__init__(text)
        self.message = text

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message}

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class BadRequest(RelayError):
    status = 400
    code = 1005
    default_message = "Bad request"


class InvalidUrl(BadRequest):
    code = 1000


class InvalidCutoutArgs(BadRequest):
    code = 1001


class InvalidResolution(BadRequest):
    code = 1002


class CutoutTypeError(BadRequest):
    code = 1002


class InvalidPostArgument(BadRequest):
    code = 1003


class DatatypeMismatch(BadRequest):
    code = 2001


class DataDimensionMismatch(BadRequest):
    code = 2002
    default_message = ("Failed to unpack data. Verify the datatype of your POSTed data and xyz "
                       "dimensions used in the POST URL.")


class DatatypeNotSupported(BadRequest):
    code = 2003


class Unsupported4D(BadRequest):
    code = 2005


class UnsupportedVersion(BadRequest):
    code = 9003
    default_message = " This API version is unsupported. Update to version v1"


class NotFound(RelayError):
    status = 404
    code = 2004
    default_message = "Not found"


class ResourceNotFound(NotFound):
    code = 4000


class ObjectNotFound(NotFound):
    code = 4004


class Unauthorized(RelayError):
    status = 401
    code = 3004
    default_message = "Access denied, are you logged in? Send 'Authorization: Token <token>'"


class MethodNotAllowed(RelayError):
    status = 405
    code = 1006
    default_message = "Method not allowed: this relay is read-only"


class RequestHeadTooLarge(BadRequest):
    status = 431
    default_message = "Request line and headers are too large"


class RequestTimeout(BadRequest):
    status = 408
    default_message = "The request head did not arrive in time"


class UnsupportedMediaType(RelayError):
    status = 415
    code = 1003
    default_message = ("POST a cutout as Content-Type: application/blosc (what intern sends) "
                       "or application/blosc-python")


class NotAcceptable(RelayError):
    status = 406
    code = 1006


class RequestTooLarge(RelayError):
    status = 413
    code = 2000
    default_message = "Cutout request is over 500MB when uncompressed. Reduce cutout dimensions."


class Overloaded(RelayError):
    status = 503
    code = 9001
    default_message = "The relay is at its concurrency limit; retry shortly"
    retry_after = 1


class StateUnavailable(RelayError):
    """The relay's own durable state (``relay.state``) cannot be read or written."""
    status = 503
    code = 5004


class LoopDetected(RelayError):
    status = 508
    code = 5008
    default_message = "Request loop detected"


class PassThroughError(RelayError):
    """An upstream's own BossDB error, re-raised with its status and code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class UpstreamError(RelayError):
    status = 502
    code = 5000
    default_message = "The upstream store failed"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = 5001


class UpstreamTimeout(UpstreamError):
    status = 504
    code = 5002


class ConfigError(UpstreamError):
    code = 5003
