"""The one view body behind /bagging, /boosting, /stacking, /ab and the home page's /predict.

Strategy modules only declare a ``StrategyPage``; ``make_strategy_blueprint`` builds the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, g, render_template, request, url_for
from flask.typing import ResponseReturnValue

from models.preprocess import PreprocessError
from views import samples
from views.forms import FeedbackForm, UploadForm
from views.images import data_uri, thumbnail_uri
from views.service import Served, ServiceError, loaded_models, predict_image


@dataclass(frozen=True)
class StrategyPage:
    """What differs between the strategy pages: names, words and the member-weight heading."""

    name: str
    title: str
    summary: str
    description: str
    weight_label: str = "Weight"


#: Filled by ``make_strategy_blueprint``: strategy name -> its page.
PAGES: dict[str, StrategyPage] = {}
#: Endpoint -> how to show its upload form again with an error (used by the error handlers).
Renderer = Callable[[UploadForm | None, int, str | None], ResponseReturnValue]
UPLOAD_PAGES: dict[str, Renderer] = {}


def first_error(form: UploadForm) -> str:
    """The first validation message, CSRF included, to show above the form."""
    for field in form:
        if field.errors:
            message = field.errors[0]
            return f"{field.label.text}: {message}" if field.name == "sample" else str(message)
    return "The form is incomplete; choose an image and try again."


def model_facts(name: str) -> list[dict[str, Any]]:
    """Members and test accuracy of the ensemble(s) behind a page, from the artifact manifest."""
    models = loaded_models()
    if models.bundle is None:
        return []
    manifest = models.bundle.manifest
    tests = manifest.get("metrics", {}).get("test", {}).get("strategies", {})
    facts = []
    for strategy in ("bagging", "boosting") if name == "ab" else (name,):
        members = manifest.get("strategies", {}).get(strategy, {}).get("members", [])
        accuracy = tests.get(strategy, {}).get("accuracy")
        facts.append({"strategy": strategy, "members": len(members), "accuracy": accuracy})
    return facts


def render_result(served: Served, data: bytes, true_label: int | None) -> ResponseReturnValue:
    """The result page of one prediction, with the strategy's own template bits."""
    body = served.body
    classes = tuple(body["probabilities"])
    form = FeedbackForm(formdata=None, classes=classes)  # starts on "choose the true class"
    thumbnail = thumbnail_uri(data, current_app.config["MAX_IMAGE_PIXELS"])
    return render_template(
        [f"{body['strategy']}/result.html", "predict/result.html"],
        page=PAGES[body["strategy"]],
        arm_page=PAGES[body["arm"]],
        p=body,
        classes=classes,
        thumbnail=thumbnail,
        canvas=data_uri(served.canvas),
        true_label=true_label,
        feedback_form=form,
    )


def handle_upload(form: UploadForm, strategy: str, render_form: Renderer) -> ResponseReturnValue:
    """Validate the form, predict, and render the result, or the form again with the reason."""
    if not form.validate_on_submit():
        return render_form(form, 413 if form.too_large else 400, first_error(form))
    data, true_label = form.read_upload()
    try:
        served = predict_image(data, strategy, client_id=g.get("client_id"))
    except (PreprocessError, ServiceError) as exc:
        return render_form(form, exc.status_code, str(exc))
    return render_result(served, data, true_label)


def render_upload_page(
    template: str, form: UploadForm, status: int, error: str | None, **context: Any
) -> ResponseReturnValue:
    """An upload page (home or a strategy) with its form, the gallery and why it was refused."""
    html = render_template(
        template,
        form=form,
        error=error,
        gallery=samples.gallery(),
        max_upload_mb=current_app.config["MAX_UPLOAD_MB"],
        **context,
    )
    return html, status


def make_strategy_blueprint(page: StrategyPage) -> Blueprint:
    """``GET|POST /<name>``: the upload page for one strategy and its result."""
    bp = Blueprint(page.name, __name__)
    PAGES[page.name] = page

    def render_form(
        form: UploadForm | None, status: int = 200, error: str | None = None
    ) -> ResponseReturnValue:
        return render_upload_page(
            "predict/page.html",
            form if form is not None else UploadForm(formdata=None),
            status,
            error,
            page=page,
            action=url_for(f"{page.name}.page"),
            facts=model_facts(page.name),
        )

    def page_view() -> ResponseReturnValue:
        form = UploadForm()
        if request.method == "GET":
            return render_form(form)
        return handle_upload(form, page.name, render_form)

    bp.add_url_rule(f"/{page.name}", "page", page_view, methods=("GET", "POST"))
    UPLOAD_PAGES[f"{page.name}.page"] = render_form
    return bp
