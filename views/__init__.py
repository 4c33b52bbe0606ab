"""The web layer: one blueprint per area, sharing one prediction service (``views.service``).

main (/, /predict, feedback forms) · bagging, boosting, stacking, ab (one strategy page each,
built by ``views.predict.make_strategy_blueprint``) · api (/api/v1) · admin · health · metrics
(/metrics, Prometheus) · errors.
"""
