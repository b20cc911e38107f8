"""Pytest plugins shared by the test suite (registered via ``pytest_plugins`` in the root conftest)."""
