"""Console forms: CSRF on every mutating form; the fields become an API body, validated there."""

from __future__ import annotations

import math

from flask_wtf import FlaskForm
from wtforms import FloatField, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange, Optional, ValidationError

from experiments.spec import ROUTER_KINDS


def _finite(_form: FlaskForm, field: FloatField) -> None:
    if field.data is not None and not math.isfinite(field.data):
        raise ValidationError("Enter a finite number.")


class MdeForm(FlaskForm):
    """The admin page's "detectable difference" (GET parameter, so no CSRF token)."""

    class Meta:
        csrf = False

    mde = FloatField(
        "Smallest difference to detect",
        default=0.02,
        validators=[
            Optional(),
            _finite,
            NumberRange(0.001, 0.5, "Enter a difference between 0.001 and 0.5 (0.1%% to 50%%)."),
        ],
    )


class MdePointsForm(FlaskForm):
    """The experiment page's detectable difference, typed in percentage points as it is shown
    ("2" means 2 points, 0.02 as a fraction); GET parameter, so no CSRF token."""

    class Meta:
        csrf = False

    mde_pp = FloatField(
        "Smallest difference to detect (percentage points)",
        validators=[
            Optional(),
            _finite,
            NumberRange(0.1, 50, "Enter a difference between 0.1 and 50 percentage points."),
        ],
    )


class ExperimentForm(FlaskForm):
    """Create an experiment: name, router, arms with weights, and any router-specific fields."""

    name = StringField("Name", validators=[DataRequired(), Length(max=63)])
    strategy = SelectField(
        "Router", choices=[SelectChoice(k, k.replace("_", " ")) for k in ROUTER_KINDS]
    )
    models = TextAreaField(
        "Arms, one per line (model or model = weight)",
        validators=[DataRequired()],
        default="bagging = 0.5\nboosting = 0.5",
    )
    control = StringField("Control (optional)", validators=[Optional(), Length(max=63)])
    extra = TextAreaField(
        'Other fields as JSON (optional), e.g. {"canary_model": "boosting"}',
        validators=[Optional(), Length(max=20000)],
    )


class ActionForm(FlaskForm):
    """A button that changes an experiment (pause, resume, stop, rollback, promote): CSRF only."""
