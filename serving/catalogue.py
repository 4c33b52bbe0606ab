"""The one list of strategies: forms, navigation, pages, reports and benches derive from it.

Built-in entries are the artifact's ensembles plus the built-in ``ab`` experiment; created
ensembles and experiments (rows in the database) join them at run time through ``Catalogue``.
No other module writes a strategy name out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    """One thing a client may ask for by name: an ensemble or an experiment."""

    name: str
    kind: str  # "ensemble" | "experiment"
    title: str
    summary: str
    description: str = ""
    weight_label: str = "Weight"
    builtin: bool = False
    #: Built-ins with their own ``/<name>`` page; created ones are offered on the home page.
    page: bool = False


BAGGING = Strategy(
    name="bagging",
    kind="ensemble",
    title="Bagging",
    summary="Several CNNs, each trained on a bootstrap resample; their answers are averaged.",
    description=(
        "Every member saw a different random resample of the training set, so their mistakes "
        "differ. Averaging their class probabilities cancels much of that noise: the ensemble "
        "is usually steadier and better calibrated than any one member."
    ),
    builtin=True,
    page=True,
)
BOOSTING = Strategy(
    name="boosting",
    kind="ensemble",
    title="Boosting",
    summary="CNNs trained one after another on the examples earlier ones got wrong (SAMME).",
    description=(
        "Each member is trained on a resample that favours the images its predecessors "
        "misclassified. A member's vote counts with its weight alpha, which is larger the "
        "fewer mistakes it made on the weighted training set."
    ),
    weight_label="Alpha (α)",
    builtin=True,
    page=True,
)
STACKING = Strategy(
    name="stacking",
    kind="ensemble",
    title="Stacking",
    summary="A meta-model learns how to combine every member's probabilities.",
    description=(
        "A logistic regression, fitted on images no member trained on, reads all members' "
        "class probabilities and learns whom to trust for which class. If the meta-model is "
        "missing, fails or answers nonsense, the best single member answers instead, and the "
        "result says so."
    ),
    weight_label="Influence",
    builtin=True,
    page=True,
)
CASCADE = Strategy(
    name="cascade",
    kind="ensemble",
    title="Cascade",
    summary="Members answer in turn; it stops as soon as the running answer is confident.",
    description=(
        "The best member answers first. When the combined answer so far is confident enough "
        "(a threshold chosen on images no member trained on), the cascade stops; otherwise "
        "the next member joins. Easy images cost one member, hard ones get all of them."
    ),
    builtin=True,
    page=True,
)
AB = Strategy(
    name="ab",
    kind="experiment",
    title="A/B Test (Random)",
    summary="Bagging or Boosting answers at random; your browser keeps its arm.",
    description=(
        "Each visitor is assigned to Bagging or Boosting and keeps that arm on later visits "
        "(a cookie holds a random id, only its hash is stored). Your feedback on the answer "
        "feeds the comparison on the admin page."
    ),
    builtin=True,
    page=True,
)
#: Built-in ensembles in display order (each present when the artifact provides it).
BUILTIN_ENSEMBLES: tuple[Strategy, ...] = (BAGGING, BOOSTING, STACKING, CASCADE)
#: The first release's A/B experiment, created in the database at first start.
BUILTIN_EXPERIMENT = AB
#: Names nobody may create: the built-ins, and words that read as commands or routes.
RESERVED_NAMES = frozenset(
    [s.name for s in BUILTIN_ENSEMBLES] + [AB.name, "ensemble", "experiment", "predict", "admin"]
)
#: ``ab``'s arms, Bagging (the control) then Boosting; its definition at creation (Boosting's
#: share from ``AB_SPLIT``, Boosting's range first) is ``experiments.spec.ab_definition``.
AB_ARMS: tuple[str, str] = (BAGGING.name, BOOSTING.name)


def created(name: str, kind: str, detail: str) -> Strategy:
    """The catalogue entry of an ensemble or experiment made through the API."""
    title = name.replace("-", " ").capitalize()
    return Strategy(name=name, kind=kind, title=title, summary=detail)


@dataclass(frozen=True)
class Catalogue:
    """Every strategy a client may ask for right now, built-ins first."""

    entries: tuple[Strategy, ...]

    @classmethod
    def build(
        cls, builtin_ensembles: Iterable[str], created_entries: Iterable[Strategy] = ()
    ) -> Catalogue:
        """Built-ins the artifact provides, the ``ab`` experiment, then created ones by name."""
        have = set(builtin_ensembles)
        entries = [s for s in BUILTIN_ENSEMBLES if s.name in have] + [AB]
        entries += sorted(created_entries, key=lambda s: s.name)
        return cls(tuple(entries))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.entries)

    def get(self, name: str) -> Strategy | None:
        """The entry called ``name``, or None."""
        return self.by_name.get(name)

    @property
    def by_name(self) -> Mapping[str, Strategy]:
        return {s.name: s for s in self.entries}

    @property
    def pages(self) -> tuple[Strategy, ...]:
        """Entries with their own page (the built-ins)."""
        return tuple(s for s in self.entries if s.page)
