"""The end-to-end fixtures live in ``tests/local_environment.py`` (shared with ``tests/reliability``)."""
