"""A/B test: each request is served by Bagging or Boosting at random, and the arm recorded."""

from views.predict import StrategyPage, make_strategy_blueprint

PAGE = StrategyPage(
    name="ab",
    title="A/B Test (Random)",
    summary="Bagging or Boosting answers at random; your browser keeps its arm.",
    description=(
        "Each visitor is assigned to Bagging or Boosting and keeps that arm on later visits "
        "(a cookie holds a random id, only its hash is stored). Your feedback on the answer "
        "feeds the comparison on the admin page."
    ),
)
bp = make_strategy_blueprint(PAGE)
