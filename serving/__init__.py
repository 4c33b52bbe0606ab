"""The prediction path without Flask (MLServer's DataPlane): views call it, it never sees a request.

``PredictionService`` answers predictions and feedback; ``DefinitionService`` creates, changes
and deletes ensembles and experiments. Both take their collaborators in their constructors and
are built once in ``create_app`` (``app.extensions["chorus"]``).
"""
