"""API errors carried as exceptions and rendered as Kubernetes ``Status`` objects.

Why it exists: every layer (store, allocators, patching, HTTP routing) must be
able to refuse a request with the exact status code and ``reason`` a real API
server would use, because clients branch on them (409 Conflict → refetch,
410 Expired → relist, 429 → back off). One exception type keeps that uniform.
"""

from __future__ import annotations

from typing import Any

REASONS: dict[int, str] = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def status_body(
    code: int,
    message: str,
    reason: str | None = None,
    *,
    name: str | None = None,
    kind: str | None = None,
    group: str | None = None,
    causes: list[dict[str, str]] | None = None,
    retry_after: int | None = None,
) -> dict[str, Any]:
    """A ``Status`` object for a failed request (the body of an error response)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, "Unknown"),
        "code": code,
    }
    details: dict[str, Any] = {}
    if name is not None:
        details["name"] = name
    if group is not None:
        details["group"] = group
    if kind is not None:
        details["kind"] = kind
    if causes:
        details["causes"] = causes
    if retry_after is not None:
        details["retryAfterSeconds"] = retry_after
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    """A request the server refuses; ``status()`` is the body to send."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        *,
        name: str | None = None,
        kind: str | None = None,
        group: str | None = None,
        causes: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.name = name
        self.kind = kind
        self.group = group
        self.causes = causes

    def status(self) -> dict[str, Any]:
        return status_body(
            self.code,
            self.message,
            self.reason,
            name=self.name,
            kind=self.kind,
            group=self.group,
            causes=self.causes,
        )


def not_found(resource: str, name: str, kind: str, group: str = "") -> ApiError:
    label = f"{resource}.{group}" if group else resource
    return ApiError(404, f'{label} "{name}" not found', "NotFound", name=name, kind=resource,
                    group=group or None)


def invalid(kind: str, name: str, problems: list[tuple[str, str]],
            group: str = "") -> ApiError:
    """422 with one cause per (field, message) problem, worded like the real server."""
    text = "; ".join(f"{field}: {msg}" for field, msg in problems)
    causes = [{"reason": "FieldValueInvalid", "message": msg, "field": field}
              for field, msg in problems]
    label = f"{kind}.{group}" if group else kind
    return ApiError(422, f'{label} "{name}" is invalid: {text}', "Invalid", name=name,
                    kind=kind, group=group or None, causes=causes)
