"""The control plane's errors, one family grouped by what the caller can do about them.

Each class carries the HTTP status the API answers with; :func:`cloud.api.main.create_app`
registers one handler for the whole family, so a route never maps errors itself and the
same error means the same status everywhere. Feature errors subclass one of these (and
keep their builtin base, ``ValueError`` or ``LookupError``, for code that catches those).
Third-party exceptions are wrapped into this family once, where they are caught.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["BadRequestError", "ConflictError", "EdgeFleetError", "InvalidInputError", "NotFoundError",
           "PermissionDeniedError", "UnavailableError"]


class EdgeFleetError(Exception):
    """Base class; ``http_status`` is the API's answer when it escapes a route."""

    http_status: ClassVar[int] = 500


class BadRequestError(EdgeFleetError, ValueError):
    """The request names something that cannot be used as asked (a missing file, a dataset never ingested)."""

    http_status = 400


class PermissionDeniedError(EdgeFleetError, PermissionError):
    """The caller may not do this (a refused enrollment, a role that is too small)."""

    http_status = 403


class NotFoundError(EdgeFleetError, LookupError):
    """The named resource does not exist."""

    http_status = 404


class ConflictError(EdgeFleetError, ValueError):
    """The resource exists but is in a state that does not allow this (already there, already finished)."""

    http_status = 409


class InvalidInputError(EdgeFleetError, ValueError):
    """A value in the request cannot be accepted (a label outside the model's set, an unplannable spec)."""

    http_status = 422


class UnavailableError(EdgeFleetError, RuntimeError):
    """Something the request needs is not available here (a build tool, a broker)."""

    http_status = 503
