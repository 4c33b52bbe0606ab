"""Bagging: members trained on bootstrap resamples, their probabilities averaged."""

from views.predict import StrategyPage, make_strategy_blueprint

PAGE = StrategyPage(
    name="bagging",
    title="Bagging",
    summary="Several CNNs, each trained on a bootstrap resample; their answers are averaged.",
    description=(
        "Every member saw a different random resample of the training set, so their mistakes "
        "differ. Averaging their class probabilities cancels much of that noise: the ensemble "
        "is usually steadier and better calibrated than any one member."
    ),
)
bp = make_strategy_blueprint(PAGE)
