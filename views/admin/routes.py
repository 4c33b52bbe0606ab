"""Console routes; every change goes through ``DefinitionService``, like the API's."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

import store
from experiments.spec import SpecError
from serving import jsontext
from serving.errors import ServingError
from views.admin import bp
from views.admin.forms import ActionForm, ExperimentForm, MdeForm, MdePointsForm
from views.auth import admin_required
from views.charts import accuracy_chart, interval_bars, lift_chart
from views.context import actor, services
from views.errors import message_of, status_of

#: Predictions the overview lists; the rest are on /admin/predictions.
RECENT = 10


@bp.get("")
@admin_required
def index() -> ResponseReturnValue:
    """Overview, led by each experiment's verdict: then traffic per strategy, latest predictions."""
    svc = services()
    overview = svc.reports.overview()
    return render_template(
        "admin/index.html",
        overview=overview,
        bars={e["name"]: interval_bars(e["comparisons"]) for e in overview},
        experiments=svc.definitions.list()["experiments"],
        stats=svc.reports.stats(svc.catalogue().names),
        recent=store.list_predictions(svc.db.sessions(), limit=RECENT).rows,
        abstentions=store.abstentions_by_strategy(svc.db.sessions()),
        drift=svc.monitor.latest,
    )


def parse_arms(text: str) -> list[dict[str, Any]]:
    """``model`` or ``model = weight`` per line -> the API's ``models`` list."""
    models: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        name, _, weight = line.partition("=")
        entry: dict[str, Any] = {"model_id": name.strip()}
        if weight.strip():
            try:
                entry["weight"] = float(weight)
            except ValueError:
                raise SpecError(
                    f"models[{len(models)}].weight",
                    f"line {number}: the weight after '=' must be a number, got {weight.strip()!r}",
                ) from None
        models.append(entry)
    return models


def form_body(form: ExperimentForm) -> dict[str, Any]:
    """The create body the console form describes (validated by the same code as the API)."""
    body: dict[str, Any] = {}
    if form.extra.data and form.extra.data.strip():
        try:
            extra = jsontext.loads(form.extra.data)
        except RecursionError:
            raise SpecError("extra", "Other fields are nested too deeply") from None
        except jsontext.NotTextError as exc:
            raise SpecError("extra", str(exc)) from None
        except ValueError as exc:
            raise SpecError("extra", f"Other fields must be a JSON object ({exc})") from None
        if not isinstance(extra, dict):
            raise SpecError("extra", 'Other fields must be a JSON object like {"sticky": false}')
        body.update(extra)
    body["name"] = (form.name.data or "").strip()
    body["strategy"] = form.strategy.data
    body["models"] = parse_arms(form.models.data or "")
    if form.control.data and form.control.data.strip():
        body["control"] = form.control.data.strip()
    return body


@bp.route("/experiments", methods=("GET", "POST"))
@admin_required
def experiments() -> ResponseReturnValue:
    """Every experiment with status, router, arms, shares and dates; create one."""
    svc = services()
    form = ExperimentForm()
    status, error = 200, None
    if request.method == "POST":
        if form.validate_on_submit():
            try:
                created = svc.definitions.create(form_body(form), actor())
            except (ServingError, SpecError) as exc:
                status, error = status_of(exc), message_of(exc)
            else:
                flash(f"Created experiment {created['name']}.", "success")
                return redirect(url_for("admin.experiment", name=created["name"]), 303)
        else:
            status = 400
            error = next((str(f.errors[0]) for f in form if f.errors), "Check the form.")
    html = render_template(
        "admin/experiments.html",
        experiments=svc.definitions.list()["experiments"],
        form=form,
        error=error,
        models=svc.definitions.known_models(),
    )
    return html, status


@bp.get("/experiments/<name>")
@admin_required
def experiment(name: str) -> ResponseReturnValue:
    """Live verdicts, per-arm results, comparisons, guardrails, shadows, the lift and accuracy
    charts over labelled outcomes, the event history and, once decided, the frozen report."""
    svc = services()
    described = _experiment_or_abort(name)
    # Typed in percentage points (mde_pp); ?mde= (a fraction, as the API takes) still works.
    fraction, mde_form = MdeForm(formdata=request.args), MdePointsForm(formdata=request.args)
    status, mde = 200, None
    if fraction.validate() and mde_form.validate():
        if request.args.get("mde_pp", "").strip():
            mde = mde_form.mde_pp.data / 100
        elif request.args.get("mde", "").strip():
            mde = fraction.mde.data
    else:
        status = 400
        mde_form.mde_pp.errors = [*fraction.mde.errors, *mde_form.mde_pp.errors]
    results = svc.reports.results(name, mde)
    if mde is None or not mde_form.mde_pp.data:
        mde_form.mde_pp.data = round(results["mde"] * 100, 3)
    series = svc.reports.lift_series(name)
    report = svc.reports.report(name)
    html = render_template(
        "admin/experiment.html",
        e=described,
        r=results,
        bars=interval_bars(results["comparisons"]),
        series=series,
        lift=lift_chart(series),
        chart=accuracy_chart(series),
        report=report,
        report_bars=interval_bars(report.get("comparisons", {})) if report else {},
        mde_form=mde_form,
        action=ActionForm(),
    )
    return html, status


def _experiment_or_abort(name: str) -> dict[str, Any]:
    """The experiment's description, or the error page (404 for an ensemble or nothing)."""
    definitions = services().definitions
    try:
        described = definitions.get(name)
        definitions.experiment(name)
    except ServingError as exc:
        abort(status_of(exc), description=str(exc))
    return described


@bp.get("/experiments/<name>/report")
@admin_required
def report(name: str) -> ResponseReturnValue:
    """The post-experiment report frozen at the decision; 404 with a message before one."""
    described = _experiment_or_abort(name)
    body = services().reports.report(name)
    if body is None:
        abort(
            404,
            description=f"Experiment {name} has no decision yet, so there is no report; its "
            "page shows the live results.",
        )
    return render_template(
        "admin/report.html",
        e=described,
        report=body,
        report_bars=interval_bars(body.get("comparisons", {})),
    )


def _weights_from_form(arms: list[str]) -> dict[str, float]:
    weights = {}
    for arm in arms:
        raw = request.form.get(f"weight-{arm}", "").strip()
        try:
            weights[arm] = float(raw)
        except ValueError:
            raise SpecError(f"weights.{arm}", f"the weight of {arm} must be a number") from None
    return weights


@bp.post("/experiments/<name>/<verb>")
@admin_required
def change(name: str, verb: str) -> ResponseReturnValue:
    """The console's buttons: weights, canary, pause, resume, stop, rollback, promote."""
    svc = services()
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400, description="The form expired; reload the page and try again.")
    try:
        described = svc.definitions.get(name)
        if verb == "weights":
            arms = [a for a in described["models"] if f"weight-{a}" in request.form]
            svc.definitions.patch(name, {"weights": _weights_from_form(arms)}, actor())
        elif verb == "canary":
            raw = request.form.get("canary_percentage", "")
            try:
                value: Any = float(raw)
            except ValueError:
                value = raw
            svc.definitions.patch(name, {"canary_percentage": value}, actor())
        elif verb in ("pause", "resume"):
            status = "paused" if verb == "pause" else "running"
            svc.definitions.patch(name, {"status": status}, actor())
        elif verb in ("stop", "rollback", "promote"):
            svc.definitions.decide(name, verb, actor(), model=request.form.get("model"))
        else:
            abort(404, description=f"The console has no action {verb[:20]!r}.")
    except (ServingError, SpecError) as exc:
        flash(message_of(exc), "error")
        return redirect(url_for("admin.experiment", name=name), 303)
    flash(f"Experiment {name}: {verb} done; every worker follows within a second.", "success")
    return redirect(url_for("admin.experiment", name=name), 303)
