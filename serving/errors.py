"""Domain errors of the serving layer; ``views/errors.py`` maps them to HTTP in one table."""

from __future__ import annotations


class ServingError(Exception):
    """A request the service cannot fulfil; the message says what was wrong and what to do."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidRequest(ServingError):
    """The caller sent something unusable (HTTP 400)."""


class NotFound(ServingError):
    """No prediction, ensemble or experiment by that name or id (HTTP 404)."""


class Conflict(ServingError):
    """The request clashes with the current state: a taken name, a failed prediction (409)."""


class Unavailable(ServingError):
    """No model is loaded, or the ensemble could not answer (HTTP 503)."""


class TooManyRequests(ServingError):
    """The caller reached a limit, e.g. the verdicts kept for one prediction (HTTP 429)."""


class Unprocessable(ServingError):
    """Well-formed but refused: e.g. a model version that fails verification (HTTP 422)."""
