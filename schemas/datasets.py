"""What every dataset source shares (extraction's seed rows, a curate job's rows): a file under the server's
data dir, and its file format named or read from the suffix. The row formats each reads differ, so each
source model adds its own fields (``schemas.extract.DatasetSource``, ``schemas.jobs.CurateSource``)."""

from pathlib import PurePosixPath

from pydantic import Field, field_validator

from schemas.base import StrictModel

SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


class DataFileSource(StrictModel):
    """A dataset file, by its path relative to the server's data dir."""

    path: str = Field(min_length=1, max_length=1000, description="relative to the server's data dir")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or "\\" in value:
            raise ValueError("path must be relative to the data dir, without '..'")
        return value


def format_from_suffix(path: str, formats: tuple[str, ...]) -> str:
    """The file format a path's suffix names, among the ``formats`` a source reads; ValueError otherwise."""
    suffix = PurePosixPath(path).suffix.lower()
    found = SUFFIX_FORMATS.get(suffix)
    if found not in formats:
        named = f"{', '.join(formats[:-1])} or {formats[-1]}"
        raise ValueError(f"cannot tell the format from suffix {suffix!r}; set format to {named}")
    return found
