"""Routes of the pages blueprint; its strategy pages come from the catalogue at start-up.

``make_blueprint(pages)`` is called by ``create_app`` with the catalogue's built-in pages, so
``/bagging``, ``/boosting``, ``/stacking``, ``/cascade`` and ``/ab`` are rows of one table (no
import side effects) and share one view body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from models.data import FASHION_MNIST_CLASSES
from models.preprocess import PreprocessError
from serving.catalogue import Strategy
from serving.errors import ServingError
from views import samples
from views.context import services
from views.errors import status_of
from views.images import RecentThumbnails, canvas_uri, thumbnail_uri
from views.pages.forms import ChooseUploadForm, FeedbackForm, UploadForm
from views.pages.leading import leading_fields
from views.pages.owned import owned, remember
from views.templating import model_context

#: Where the thumbnails of this process's recent uploads are kept (``app.extensions``).
THUMBNAILS = "chorus.thumbnails"
#: Classes shown above the fold on a result page; all of them are one click away.
TOP_CLASSES = 3
#: The flash category of a feedback confirmation, shown inside the feedback card only.
FEEDBACK_FLASH = "feedback"


def first_error(form: UploadForm) -> str:
    """The first validation message, CSRF included, to show above the form."""
    for field in form:
        if field.errors:
            message = field.errors[0]
            return f"{field.label.text}: {message}" if field.name == "sample" else str(message)
    return "The form is incomplete; choose an image and try again."


def model_facts(name: str) -> list[dict[str, Any]]:
    """Members and test accuracy of the ensemble(s) behind a strategy, from the manifest."""
    svc = services()
    bundle = svc.models.bundle
    if bundle is None:
        return []
    snap = svc.engine.snapshot()
    experiment = snap.experiments.get(name)
    arms = list(experiment.router.arms) if experiment else [name]
    facts = []
    for arm in arms:
        node = snap.nodes.get(arm)
        if node is None:
            continue
        accuracy = bundle.manifest_info.test_accuracy(arm)
        facts.append({"strategy": arm, "members": len(node.leaves()), "accuracy": accuracy})
    return facts


def _page_of(name: str) -> Strategy:
    catalogue = services().catalogue()
    page = catalogue.get(name)
    if page is None:
        abort(404, description=f"There is no strategy called {name[:40]!r} any more.")
    return page


def thumbnails() -> RecentThumbnails:
    """This process's short-lived cache of upload thumbnails."""
    return current_app.extensions[THUMBNAILS]


def handle_upload(
    form: UploadForm, strategy: str, refused: Any, came_from: str | None
) -> ResponseReturnValue:
    """Validate the form, predict, store, and redirect to the result (Post/Redirect/Get), or
    render the form again with the reason."""
    if not form.validate_on_submit():
        return refused(form, 413 if form.too_large else 400, first_error(form))
    data, true_label = form.read_upload()
    try:
        served = services().prediction.predict(data, strategy, client_id=g.get("client_id"))
    except (PreprocessError, ServingError) as exc:
        return refused(form, status_of(exc), str(exc))
    prediction_id = served.body["prediction_id"]
    found = form.sample_set() if true_label is not None else None
    if found is not None and found.classes != tuple(served.body["probabilities"]):
        true_label = None  # another version, with other classes, answered the sample
    limit = current_app.config["MAX_IMAGE_PIXELS"]  # the upload was decoded once, in predict
    thumbnails().put(prediction_id, thumbnail_uri(data, limit, preview=served.preview))
    remember(prediction_id, came_from, true_label)
    # 303: the browser GETs the result, so a reload shows it again and never re-uploads.
    response = redirect(url_for("pages.prediction", prediction_id=prediction_id), code=303)
    response.call_on_close(served.run_after)  # shadows run after the answer is sent
    return response


def render_upload_page(
    template: str, form: UploadForm, status: int, error: str | None, **context: Any
) -> ResponseReturnValue:
    """An upload page (home or a strategy) with its form, the served version's classes and
    gallery (from one read of the bundle, so they agree) and why it was refused."""
    bundle = services().models.bundle
    html = render_template(
        template,
        form=form,
        error=error,
        gallery=samples.gallery(bundle),
        max_upload_mb=current_app.config["MAX_UPLOAD_MB"],
        **model_context(bundle),
        **context,
    )
    return html, status


def _choices() -> list[tuple[str, str]]:
    return [(s.name, s.title) for s in services().catalogue().entries]


def render_index(
    form: UploadForm | None, status: int = 200, error: str | None = None
) -> ResponseReturnValue:
    """The home page, optionally with the reason the last upload was refused."""
    entries = services().catalogue().entries
    if form is None:
        form = ChooseUploadForm(formdata=None, choices=_choices())
    return render_upload_page(
        "pages/index.html",
        form,
        status,
        error,
        pages=list(entries),
        facts={s.name: model_facts(s.name) for s in entries},
    )


def render_strategy(
    name: str, form: UploadForm | None, status: int = 200, error: str | None = None
) -> ResponseReturnValue:
    """A built-in strategy's own upload page."""
    page = _page_of(name)
    return render_upload_page(
        "pages/strategy.html",
        form if form is not None else UploadForm(formdata=None),
        status,
        error,
        page=page,
        action=url_for("pages.strategy", name=name),
        facts=model_facts(name),
    )


def render_refused(status: int, message: str) -> ResponseReturnValue | None:
    """The upload form a refused POST came from, with the reason (413 or CSRF), if any."""
    if request.method != "POST":
        return None
    if request.endpoint == "pages.predict":
        try:  # keep the chosen strategy when the form could be read at all
            form = ChooseUploadForm(choices=_choices())
        except RequestEntityTooLarge:  # the body was refused unread: read just its first fields
            fields = leading_fields(request.environ)
            form = ChooseUploadForm(
                formdata=MultiDict({k: v for k, v in fields.items() if k == "strategy"}),
                choices=_choices(),
                meta={"csrf": False},
            )
        return render_index(form, status, message)
    if request.endpoint == "pages.strategy":
        return render_strategy(str((request.view_args or {}).get("name")), None, status, message)
    return None


def index() -> ResponseReturnValue:
    """The home page: pick a strategy and upload an image."""
    return render_index(ChooseUploadForm(choices=_choices()))


def predict() -> ResponseReturnValue:
    """The home form posts here; the strategy radio decides who answers (works without JS)."""
    form = ChooseUploadForm(choices=_choices())
    if not form.is_submitted():
        return redirect(url_for("pages.index"))
    return handle_upload(
        form,
        str(form.strategy.data),
        lambda f, status, error: render_index(f, status, error),
        None,
    )


def strategy(name: str) -> ResponseReturnValue:
    """``GET|POST /<name>``: the upload page of one built-in strategy and its result."""
    form = UploadForm()
    if request.method == "GET":
        return render_strategy(name, form)
    return handle_upload(
        form,
        name,
        lambda f, status, error: render_strategy(name, f, status, error),
        name,
    )


def prediction(prediction_id: str) -> ResponseReturnValue:
    """A stored prediction's result page, shown from the store (the upload is not decoded again)."""
    return render_prediction(_load(prediction_id))


def _load(prediction_id: str) -> Any:
    """The stored prediction, or a 404 page."""
    try:
        return services().prediction.find_prediction(prediction_id)
    except ServingError as exc:
        abort(status_of(exc), description=str(exc))


def _back_url(came_from: str | None) -> str:
    """ "Classify another image": back to the strategy page the upload came from, else home."""
    if came_from in {page.name for page in services().catalogue().pages}:
        return url_for("pages.strategy", name=came_from)
    return url_for("pages.index")


def result_of(prediction: Any) -> dict[str, Any]:
    """The stored row as the result page reads it (the JSON answer's field names)."""
    probabilities = dict(prediction.probabilities or {})
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])
    return {
        "prediction_id": prediction.id,
        "strategy": prediction.strategy,
        "experiment": prediction.experiment,
        "arm": prediction.arm,
        "label": prediction.label,
        "class_index": prediction.class_index,
        "confidence": prediction.confidence,
        "probabilities": probabilities,
        "top": ranked[:TOP_CLASSES],
        "members": prediction.members or [],
        "fallback": prediction.fallback,
        "degraded": prediction.degraded or [],
        "members_used": prediction.members_used,
        "model_version": prediction.model_version,
        "latency_ms": prediction.latency_ms,
        "created_at": prediction.created_at,
        "error": prediction.error,
        "abstained": getattr(prediction, "abstained", None),
        "uncertainty": getattr(prediction, "uncertainty", None),
    }


def render_prediction(
    prediction: Any,
    form: FeedbackForm | None = None,
    status: int = 200,
    error: str | None = None,
) -> ResponseReturnValue:
    """A stored prediction's full result page; its feedback form, the upload's thumbnail and
    a sample's true class only in the browser session that made it."""
    p = result_of(prediction)
    classes = tuple(p["probabilities"])
    if form is None:
        feedback = prediction.feedback  # a "No" answer is shown; otherwise the placeholder
        wrong = feedback.true_class_index if feedback and not feedback.correct else None
        form = FeedbackForm(formdata=None, classes=classes, label=wrong)
    mine = owned(prediction.id)
    catalogue = services().catalogue()
    page = catalogue.get(prediction.strategy)
    arm_page = catalogue.get(prediction.arm) or page
    node = services().engine.snapshot().nodes.get(prediction.arm)
    came_from = mine.came_from if mine else None
    if mine is None and page is not None and page.page:
        came_from = page.name
    html = render_template(
        # Only built-in names pick a template: user-created names never become a path.
        ([f"{arm_page.name}/result.html"] if arm_page and arm_page.builtin else [])
        + ["pages/result.html"],
        p=p,
        prediction=prediction,
        page=page,
        arm_page=arm_page,
        classes=classes,
        mine=mine is not None,
        thumbnail=thumbnails().get(prediction.id) if mine else None,
        canvas=canvas_uri(prediction.canvas),
        true_label=mine.true_label if mine else None,
        fashion_mnist=classes == FASHION_MNIST_CLASSES,
        feedback_form=form,
        confirmation=get_flashed_messages(category_filter=[FEEDBACK_FLASH]),
        error=error,
        back_url=_back_url(came_from),
        members_total=len(getattr(node, "children", None) or node.leaves()) if node else None,
    )
    return html, status


def feedback(prediction_id: str) -> ResponseReturnValue:
    """Record "Yes" (the prediction was right) or "No, it was <class>", then show it."""
    stored = _load(prediction_id)
    prediction_service = services().prediction
    try:
        prediction_service.check_answered(stored)
    except ServingError as exc:
        abort(status_of(exc), description=str(exc))
    classes = tuple(stored.probabilities or ())
    form = FeedbackForm(classes=classes, predicted=stored.class_index)
    if not form.validate_on_submit():
        message = next((str(f.errors[0]) for f in form if f.errors), "Invalid feedback.")
        return render_prediction(stored, form, 400, message)
    if form.yes.data:
        true_index = stored.class_index
    elif form.no.data:
        true_index = form.label.data
    else:
        return render_prediction(
            stored, form, 400, "Press “Yes”, or choose the true class and press “Send correction”."
        )
    try:
        recorded = prediction_service.record_verdict(stored, true_index)
    except ServingError as exc:  # e.g. 429: the prediction holds the most verdicts kept
        return render_prediction(stored, form, status_of(exc), str(exc))
    verdict = "right" if recorded.correct else f"wrong: it was {classes[true_index]}"
    if recorded.counted:
        flash(f"Thanks! Recorded that the prediction was {verdict}.", FEEDBACK_FLASH)
    elif recorded.outcome == "later":
        flash(
            f"Thanks! Your answer (the prediction was {verdict}) is kept, but the first answer "
            "given for this prediction is the one that counts.",
            FEEDBACK_FLASH,
        )
    else:
        flash(
            f"Thanks! Your answer (the prediction was {verdict}) is kept; this browser has "
            "already given as many answers as count towards one comparison.",
            FEEDBACK_FLASH,
        )
    return redirect(url_for("pages.prediction", prediction_id=stored.id), code=303)


def make_blueprint(pages: Sequence[Strategy]) -> Blueprint:
    """The pages blueprint with one ``/<name>`` rule per built-in strategy page."""
    bp = Blueprint("pages", __name__)
    bp.record_once(lambda state: state.app.extensions.setdefault(THUMBNAILS, RecentThumbnails()))
    bp.add_url_rule("/", "index", index, methods=("GET",))
    bp.add_url_rule("/predict", "predict", predict, methods=("GET", "POST"))
    for page in pages:
        bp.add_url_rule(
            f"/{page.name}",
            "strategy",
            strategy,
            defaults={"name": page.name},
            methods=("GET", "POST"),
        )
    bp.add_url_rule("/predictions/<prediction_id>", "prediction", prediction, methods=("GET",))
    bp.add_url_rule(
        "/predictions/<prediction_id>/feedback", "feedback", feedback, methods=("POST",)
    )
    return bp
