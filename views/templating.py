"""Jinja filters and globals: numbers formatted one way on every page."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import PurePath
from typing import Any

from flask import Flask, url_for

from ensembles.bundle import EnsembleBundle
from serving.reports import format_p
from views.charts import points_text
from views.context import services

log = logging.getLogger(__name__)

MINUS = "\u2212"  # the minus sign, as in the headings ("Boosting − Bagging"), not a hyphen


def _signed(value: float, text: str) -> str:
    """Prefix the minus sign to ``text`` (the formatted magnitude) unless it rounds to zero."""
    rounds_to_zero = not text.strip("0.%")  # never "−0.0%"
    return MINUS + text if value < 0 and not rounds_to_zero else text


def pct(value: float | None, digits: int = 1) -> str:
    """0.1234 -> "12.3%", -0.1284 -> "−12.8%"; None (undefined) -> an em dash."""
    if value is None:
        return "—"
    return _signed(value, f"{abs(value) * 100:.{digits}f}%")


def prob(value: float | None, digits: int = 1) -> str:
    """A probability or confidence: like ``pct``, but never rounded up to a certain "100.0%".

    A softmax is below 1 even when float32 says 1.0, so anything that would print as 100.0%
    reads "> 99.9%" (with ``digits`` decimals).
    """
    if value is None:
        return "—"
    ceiling = 100 - 10.0**-digits
    if round(value * 100, digits) > ceiling:
        return f"> {ceiling:.{digits}f}%"
    return pct(value, digits)


def num(value: float | None, digits: int = 3) -> str:
    """-1.25 -> "−1.250", with the same minus sign as ``pct``; None -> an em dash."""
    return "—" if value is None else _signed(value, f"{abs(value):.{digits}f}")


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def pvalue(value: float | None) -> str:
    """p-values below 0.001 are shown as such, never as a misleading 0.000."""
    if value is None:
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def ptext(value: float | None, name: str = "p") -> str:
    """A p-value in a sentence: "p = 0.042" or "p < 0.001", never "p = < 0.001"."""
    return format_p(value, name)


def points(value: float | None, digits: int = 1) -> str:
    """An accuracy difference in points with its sign: 0.008 -> "+0.8"; None -> an em dash."""
    return "—" if value is None else points_text(value, digits)


def duration(seconds: float | None) -> str:
    """3 d 4 h, 2 h 5 min, 4 min 10 s or 45 s: how long an experiment ran."""
    if seconds is None:
        return "—"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def when(value: datetime | str | None) -> str:
    """One date format on every page; ISO 8601 text (from the JSON reports) is parsed first."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _navigation() -> list[dict[str, str]]:
    """The header links: every built-in strategy page from the catalogue, then Admin."""
    try:
        pages = services().catalogue().pages
    except Exception as exc:  # an error page must render even when the store is down
        log.warning("navigation without strategy pages: %s", exc)
        pages = ()
    links = [{"url": url_for("pages.strategy", name=p.name), "label": p.title} for p in pages]
    return links + [{"url": url_for("admin.index"), "label": "Admin"}]


def _trained_on(bundle: EnsembleBundle | None) -> str:
    """The data a version learned from, as pages name it: Fashion-MNIST or the folder's name."""
    if bundle is None or bundle.fashion_mnist:
        return "Fashion-MNIST"
    source = (bundle.manifest.get("data") or {}).get("source")
    return PurePath(str(source)).name if source else "its own images"


def model_context(bundle: EnsembleBundle | None) -> dict[str, Any]:
    """What pages say about the served version: its name, classes and the data it learned
    from (Fashion-MNIST's wording only for a Fashion-MNIST version)."""
    return {
        "model_version": bundle.version if bundle is not None else None,
        "model_classes": bundle.classes if bundle is not None else (),
        "fashion_mnist": bundle is None or bundle.fashion_mnist,
        "trained_on": _trained_on(bundle),
    }


def _globals() -> dict[str, Any]:
    return {**model_context(services().models.bundle), "navigation": _navigation()}


def init_app(app: Flask) -> None:
    """Register the filters and the model version every page footer shows."""
    for function in (pct, prob, num, ms, pvalue, ptext, points, duration, when):
        app.add_template_filter(function)
    app.context_processor(_globals)
