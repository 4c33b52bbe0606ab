"""The store's domain errors: views map them to HTTP (409, 404, 409) in one table."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the errors a repository function raises on purpose."""


class NameTakenError(StoreError):
    """The name belongs to an ensemble or experiment already (names are unique across both)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the name {name!r} is taken by an existing ensemble or experiment")
        self.name = name


class DefinitionNotFound(StoreError, LookupError):
    """No ensemble or experiment has that name."""

    def __init__(self, name: str, kind: str = "ensemble or experiment") -> None:
        super().__init__(f"no {kind} is named {name!r}")
        self.name = name
        self.kind = kind


class ConcurrentChangeError(StoreError):
    """Someone changed the experiment since the caller read it (its revision moved on)."""

    def __init__(self, name: str, expected: int, actual: int) -> None:
        super().__init__(
            f"experiment {name!r} is at revision {actual}, not {expected}: it was changed "
            "meanwhile; read it again and retry"
        )
        self.name = name
        self.expected = expected
        self.actual = actual
