"""Fixtures of the chaos tests: ``workers`` lives in tests/conftest.py."""
