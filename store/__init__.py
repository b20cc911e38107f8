"""Everything the fleet keeps in Redis: key names, job records and counters, the queue and fair share,
examples, review, extraction state, skill sets, endpoints, limits and stats.

Both sides use it (service -> store <- workers); it imports only ``schemas`` (and redis, arq, pydantic),
never ``service`` or ``workers``: the import-linter contracts in ``pyproject.toml`` check that.
"""
