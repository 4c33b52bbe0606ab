"""The pages a person uses: the upload form, one page per built-in strategy, results, feedback."""

from views.pages.routes import make_blueprint, render_refused

__all__ = ["make_blueprint", "render_refused"]
