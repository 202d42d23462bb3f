"""Errors the server turns into HTTP responses with OpenAI's error shape."""

from __future__ import annotations

from typing import Any

from circuits.errors import CoalignError


class ApiError(CoalignError):
    """A request the server refuses: ``status`` (4xx), a one-line message naming the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.param = param
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}
