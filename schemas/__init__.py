"""The contract shared by the API and the workers.

This package imports pydantic and pydantic-settings only, never ``service`` or ``workers``
(``tests/test_schemas.py`` checks that), so both sides can depend on it without cycles.
"""
