"""Boosting: SAMME members trained in sequence, each weighted by its alpha."""

from views.predict import StrategyPage, make_strategy_blueprint

PAGE = StrategyPage(
    name="boosting",
    title="Boosting",
    summary="CNNs trained one after another on the examples earlier ones got wrong (SAMME).",
    description=(
        "Each member is trained on a resample that favours the images its predecessors "
        "misclassified. A member's vote counts with its weight alpha, which is larger the "
        "fewer mistakes it made on the weighted training set."
    ),
    weight_label="Alpha (α)",
)
bp = make_strategy_blueprint(PAGE)
