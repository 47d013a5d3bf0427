"""The project's one error hierarchy.

Every error a user can cause or meet is one of these. Each class carries the HTTP status and the
OpenAI-style error ``type`` it maps to, so the mapping lives here and nowhere else: the server turns
any ``D2VError`` into ``{"error": {"message", "type", "code"}}`` with ``status``; the CLI prints the
message and exits with ``exit_code``. Torch-free.
"""

from __future__ import annotations


class D2VError(Exception):
    """Base class. ``code`` is a short machine-readable string (defaults to the class's)."""

    status: int = 500
    type: str = "internal_error"
    default_code: str = "internal_error"
    exit_code: int = 1

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def to_body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


class InvalidInput(D2VError):
    """The request or the input data is malformed (undecodable image, bad base64, wrong field)."""

    status = 400
    type = "invalid_request_error"
    default_code = "invalid_input"
    exit_code = 2


class ConfigError(InvalidInput):
    """A bad configuration value, path or option (CLI and config files)."""

    default_code = "invalid_config"


class NotFound(InvalidInput):
    """A named model, checkpoint or file does not exist."""

    status = 404
    default_code = "not_found"


class PayloadTooLarge(InvalidInput):
    """Body, item count, image pixels, audio duration or text length over a configured limit."""

    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(InvalidInput):
    """A content type or file format the server does not accept."""

    status = 415
    default_code = "unsupported_media_type"


class UnprocessableInput(InvalidInput):
    """Well-formed but semantically invalid (e.g. an option the model does not support)."""

    status = 422
    default_code = "unprocessable"


class Unauthorized(D2VError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"
    exit_code = 3


class Overloaded(D2VError):
    """The queue is full; retry after ``retry_after`` seconds."""

    status = 429
    type = "rate_limit_error"
    default_code = "overloaded"
    exit_code = 4

    def __init__(self, message: str, *, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(D2VError):
    """A backend (Triton, a model) is down or not ready yet."""

    status = 503
    type = "service_unavailable"
    default_code = "unavailable"
    exit_code = 5


class InternalError(D2VError):
    """A bug or an unexpected engine failure; the message never leaks internals beyond a summary."""
