"""The screening example: a Parsl workflow (``workflow.py``) scoring candidates with the
``demo/screening`` servable (``model/``) on the hub."""
