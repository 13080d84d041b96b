"""Errors as the OpenAI API writes them: ``{"error": {"message", "type", "param", "code"}}`` with
the matching HTTP status, and the library's exceptions mapped onto them (once, here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import errors as wl


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, message, code=code)


def rate_limited(message: str, retry_after: float, code: str = "rate_limit_exceeded") -> ApiError:
    return ApiError(429, message, type="rate_limit_error" if code != "insufficient_quota" else "insufficient_quota",
                    code=code, headers={"Retry-After": str(max(1, round(retry_after + 0.499)))})


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type="invalid_request_error", code="invalid_api_key")


def from_library(e: wl.WasillamaError) -> ApiError:
    """What a request that failed inside the library answers."""
    if isinstance(e, wl.ContextFullError):
        return bad_request(str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, wl.DeadlineExceededError):
        return ApiError(504, str(e), type="timeout_error", code="timeout")
    if isinstance(e, wl.OutOfMemoryError):
        return ApiError(507, str(e), type="server_error", code="out_of_memory")
    if isinstance(e, (wl.InvalidArgumentError, wl.UnsupportedOptionError, wl.ChatTemplateError)):
        return bad_request(str(e))
    if isinstance(e, wl.ModelNotFoundError):
        return not_found(str(e), code="model_not_found")
    return ApiError(500, str(e), type="server_error", code=type(e).__name__)
