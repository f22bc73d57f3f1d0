"""Protocol status codes and the one error the protocol layer raises (no grpc import: usable anywhere)."""

from __future__ import annotations

from enum import Enum

from privsplit.errors import PrivsplitError


class Code(str, Enum):
    """gRPC status codes by name (``grpc.StatusCode[code.value]`` is the transport's code)."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class ProtocolError(PrivsplitError):
    """A request or reply the protocol refuses: carries the status ``code`` and the offending ``field``.

    The message names the field and what was expected, e.g.
    ``inputs[0].shape: expected [B, 32, 8, 8], got [1, 32, 8]``.
    """

    exit_code = 6

    def __init__(self, code: Code, message: str, *, field: str | None = None) -> None:
        self.code = Code(code)
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)

    @property
    def message(self) -> str:
        return str(self)


def invalid(field: str, message: str) -> ProtocolError:
    return ProtocolError(Code.INVALID_ARGUMENT, message, field=field)
