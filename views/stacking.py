"""Stacking: a logistic-regression meta-model over all members, with a safe fallback."""

from views.predict import StrategyPage, make_strategy_blueprint

PAGE = StrategyPage(
    name="stacking",
    title="Stacking",
    summary="A meta-model learns how to combine every member's probabilities.",
    description=(
        "A logistic regression, fitted on images no member trained on, reads all members' "
        "class probabilities and learns whom to trust for which class. If the meta-model is "
        "missing, fails or answers nonsense, the best single member answers instead, and the "
        "result says so."
    ),
    weight_label="Influence",
)
bp = make_strategy_blueprint(PAGE)
