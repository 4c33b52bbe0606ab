"""Which predictions this browser made: kept in the signed session cookie, newest last.

The result page of a prediction is a shareable link; only the browser session that made the
prediction sees its feedback form, its upload's thumbnail, the sample's true class and the way
back to the page it came from. The session is signed with SECRET_KEY, so it cannot be edited.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import session

SESSION_KEY = "predictions"
#: Predictions remembered per browser: enough for a visit, small enough for a cookie.
KEEP = 20


@dataclass(frozen=True)
class Owned:
    """A prediction this browser made: the page it was made from and a sample's true class."""

    prediction_id: str
    came_from: str | None  # a built-in strategy page's name; None for the home page
    true_label: int | None  # a gallery sample's true class


def remember(prediction_id: str, came_from: str | None, true_label: int | None) -> None:
    """Note in the session that this browser made ``prediction_id``."""
    kept = [e for e in session.get(SESSION_KEY, []) if e and e[0] != prediction_id]
    kept.append([prediction_id, came_from, true_label])
    session[SESSION_KEY] = kept[-KEEP:]


def owned(prediction_id: str) -> Owned | None:
    """What this browser remembers of ``prediction_id``, or None if another browser made it."""
    for entry in session.get(SESSION_KEY, []):
        if isinstance(entry, list) and len(entry) == 3 and entry[0] == prediction_id:
            came_from, label = entry[1], entry[2]
            return Owned(
                prediction_id,
                came_from if isinstance(came_from, str) else None,
                label if isinstance(label, int) else None,
            )
    return None
