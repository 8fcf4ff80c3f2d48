"""Shared test code (imported as ``helpers.<module>``; fixtures live in ``tests/conftest.py``)."""
