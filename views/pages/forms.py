"""The upload and feedback forms: every browser POST is validated (field, type, size, CSRF)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import current_app
from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField
from wtforms import IntegerField, RadioField, SelectChoice, SelectField, SubmitField
from wtforms.validators import Optional, ValidationError

from views import samples
from views.context import services

#: File name extensions a browser may upload (the bytes are checked again when decoded).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff")


def _within_upload_limit(form: FlaskForm, field: FileField) -> None:
    """Refuse files over MAX_UPLOAD_MB (the request limit alone also counts form overhead)."""
    upload = field.data
    if not upload:
        return
    limit = current_app.config["MAX_UPLOAD_BYTES"]
    upload.stream.seek(0, 2)
    size = upload.stream.tell()
    upload.stream.seek(0)
    if size > limit:
        form.too_large = True  # answered 413, like a request over MAX_CONTENT_LENGTH
        raise ValidationError(
            f"The file is {size / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB. "
            "Upload a smaller image."
        )


def _sample_exists(form: UploadForm, field: IntegerField) -> None:
    """Only indices into the served version's samples are accepted (never a path)."""
    if field.data is None:
        return
    found = form.sample_set()
    if found is None:
        raise ValidationError("Sample images are not available on this server; upload a file.")
    if not 0 <= field.data < len(found):
        raise ValidationError(f"Sample must be between 0 and {len(found) - 1}.")


class UploadForm(FlaskForm):
    """An image file, or the index of a gallery sample: exactly one of the two."""

    image = FileField(
        "Image",
        validators=[
            FileAllowed(
                IMAGE_EXTENSIONS,
                "Upload an image file: " + ", ".join(e.upper() for e in IMAGE_EXTENSIONS) + ".",
            ),
            _within_upload_limit,
        ],
    )
    sample = IntegerField("Sample", validators=[Optional(), _sample_exists])
    too_large = False

    def validate(self, extra_validators: Any = None) -> bool:
        """Besides each field's checks, demand a file or a sample."""
        if not super().validate(extra_validators):
            return False
        if self.sample.data is None and not self.image.data:
            self.image.errors = ["Choose an image file to upload, or click a sample image."]
            return False
        return True

    def sample_set(self) -> samples.SampleSet | None:
        """The served version's samples, looked up once, so checking and reading agree."""
        if not hasattr(self, "_samples"):
            self._samples = samples.sample_set(services().models.bundle)
        return self._samples

    def read_upload(self) -> tuple[bytes, int | None]:
        """The image bytes to classify and, for a gallery sample, its true class."""
        found = self.sample_set() if self.sample.data is not None else None
        if found is not None:
            return found.png(self.sample.data)
        return self.image.data.read(), None


class ChooseUploadForm(UploadForm):
    """The home page's form: the upload plus which strategy (from the catalogue) answers."""

    strategy = RadioField("Strategy", validate_choice=True)

    def __init__(self, *args: Any, choices: Sequence[tuple[str, str]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strategy.choices = [SelectChoice(name, title) for name, title in choices]
        if self.strategy.data is None and choices:
            self.strategy.data = choices[0][0]


#: The feedback select's first option: "No" must name a class on purpose, never by default.
CHOOSE_CLASS = "choose the true class"


def _class_index(value: Any) -> int | None:
    """The select's value as a class index; the placeholder ("") is no class."""
    return None if value in ("", None) else int(value)


class FeedbackForm(FlaskForm):
    """The "Was this right? Yes / No, it was: <class>" form under a result."""

    yes = SubmitField("Yes")
    no = SubmitField("Send correction")
    label = SelectField("True class", coerce=_class_index, validate_choice=True)

    def __init__(
        self, *args: Any, classes: tuple[str, ...] = (), predicted: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.classes, self.predicted = classes, predicted
        self.label.choices = [SelectChoice("", CHOOSE_CLASS)] + [
            SelectChoice(i, name) for i, name in enumerate(classes)
        ]

    def validate_label(self, field: SelectField) -> None:
        """A "No" with no class, or with the predicted one, would record nothing or a right one."""
        if not self.no.data or field.data not in (None, self.predicted):
            return
        message = "You said the prediction was wrong: choose the true class"
        if field.data is not None:
            name = self.classes[field.data]
            message += f", not {name}, which it predicted (or press “Yes” if {name} is right)"
        field.data = None  # show the placeholder again, so the page asks for a class
        raise ValidationError(message + ".")
