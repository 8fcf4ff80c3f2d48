"""Shared test code (imported as ``helpers.<module>``: tests/ is on sys.path through the rootdir
conftest; fixtures live in ``tests/conftest.py``)."""
