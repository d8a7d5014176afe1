"""The iris example: a scikit-learn forest, trained on first use.

``python -m dlhub_hpc.examples.iris DIR`` writes a ready-to-publish copy of this example to
DIR (``servable.yaml`` and a freshly trained ``model.pkl``); ``--publish`` also publishes
it to the running hub. The model is trained where it will be loaded rather than shipped,
so that its pickle always matches the installed scikit-learn.
"""
