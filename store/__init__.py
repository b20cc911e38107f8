"""Everything the fleet keeps in Redis: key names, job records and counters, the queue and fair share,
examples, review, extraction state, skill sets, endpoints, limits and stats; and the data dir's dataset files
(``datasets``: the one reader; ``survey``: the checks the API runs at submit).

Both sides use it (service -> store <- workers); it imports only ``schemas`` (and redis, arq, pydantic,
orjson, pyarrow), never ``service`` or ``workers``: the import-linter contracts in ``pyproject.toml`` check
that.
"""
