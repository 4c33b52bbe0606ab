"""How a view reaches the serving objects ``create_app`` built (``app.extensions``)."""

from __future__ import annotations

from flask import current_app, request

from serving.container import Services

EXTENSION = "chorus"


def services() -> Services:
    """This app's services (prediction, definitions, reports, engine, models)."""
    return current_app.extensions[EXTENSION]


def actor() -> str:
    """Who is making a change: the authenticated admin user (events record it)."""
    auth = request.authorization
    return (auth.username if auth and auth.username else "anonymous")[:64]
