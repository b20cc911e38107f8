"""The one reader of a job spec that may come with an uploaded dataset (``POST /v1/curate``, ``POST
/v1/skill-sets/extract``).

A multipart upload is streamed straight to ``uploads/{job_id}/`` under the data dir, never whole into
memory, and refused (413) as soon as it passes ``max_upload_mb``. It is private to the job that received it:
a spec's ``source.path`` may not point into ``uploads/``. The routes delete the job's upload directory on
any refusal or error before the job is created.
"""

import asyncio
import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from schemas.errors import TooLarge
from schemas.settings import Settings
from service.errors import unprocessable

UPLOAD_DIR = "uploads"  # under the data dir; one directory per job, readable by that job only
UPLOAD_STEM = "seed"
FIELDS_LIMIT = 1 << 20  # bytes of the non-file parts together (the spec is a few hundred)
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": "the uploaded file is over the server's SKILLMIX_MAX_UPLOAD_MB"}
}


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` inlined, so it is valid inside the OpenAPI document (whose request body
    offers the spec as JSON or, with the file, as multipart)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    result: dict[str, Any] = walk(schema)
    return result


def invalid(exc: ValidationError) -> RequestValidationError:
    """Pydantic's errors in FastAPI's 422 shape, located under ``body`` like any request body error."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)  # input may be raw bytes
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


class UploadForm:
    """A multipart upload parsed as it streams in: the ``file`` part goes straight to disk, with a size cap.

    The parser's callbacks only collect; ``receive`` does the file I/O in a thread after each chunk. ``digest``
    fingerprints the form's content as it streams (every part's name, filename and bytes, not the random
    boundary), for ``Idempotency-Key`` (``service.idempotency``).
    """

    def __init__(self, part_path: Path, cap: int) -> None:
        self.part_path, self.cap = part_path, cap
        self.filename: str | None = None
        self.spec: bytes | None = None
        self.file_bytes = 0
        self._fields_bytes = 0
        self._name = ""
        self._header = b""
        self._value = b""
        self._disposition = b""
        self._text = bytearray()
        self._pending: list[bytes] = []
        self._form = hashlib.sha256()
        self._part = hashlib.sha256()
        self._part_filename = b""

    @property
    def digest(self) -> str:
        return self._form.hexdigest()

    def on_part_begin(self) -> None:
        self._name, self._disposition, self._text = "", b"", bytearray()
        self._part, self._part_filename = hashlib.sha256(), b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part_filename = options.get(b"filename", b"")
        if self._name == "file":
            if self.filename is not None:
                unprocessable("file", "send one dataset file, not several")
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part.update(data[start:end])
        if self._name == "file":
            self.file_bytes += end - start
            if self.file_bytes > self.cap:
                too_large(self.cap)
            self._pending.append(data[start:end])
            return
        self._fields_bytes += end - start
        if self._fields_bytes > FIELDS_LIMIT:
            unprocessable("spec", f"the form's text parts are over {FIELDS_LIMIT >> 10} KiB; the spec is small JSON")
        if self._name == "spec":
            self._text += data[start:end]

    def on_part_end(self) -> None:
        if self._name == "spec":
            self.spec = bytes(self._text)
        for field in (self._name.encode(), self._part_filename, self._part.digest()):
            self._form.update(len(field).to_bytes(8, "big") + field)  # length-prefixed: no two forms alike

    async def receive(self, request: Request) -> None:
        _, params = parse_options_header(request.headers.get("content-type"))
        boundary = params.get(b"boundary")
        if not boundary:
            unprocessable("file", "a multipart request needs a boundary in its content-type")
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self.on_part_begin,
                "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end,
                "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value,
                "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished,
            },
        )
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        with self.part_path.open("wb") as out:
            try:
                async for chunk in request.stream():
                    parser.write(chunk)
                    if self._pending:
                        data, self._pending = b"".join(self._pending), []
                        await asyncio.to_thread(out.write, data)
                parser.finalize()
            except FormParserError as exc:
                unprocessable("file", f"the multipart body is malformed ({exc})")


def too_large(cap: int) -> NoReturn:
    mb = cap / (1 << 20)
    raise TooLarge(
        f"the upload is larger than the server's cap of {mb:g} MB (SKILLMIX_MAX_UPLOAD_MB); "
        "put the file in the server's data dir and give source.path instead, or use fewer rows",
        "file",
    )


def upload_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / UPLOAD_DIR / job_id


class JobUpload:
    """A job's upload directory while the job is being created: deleted on leaving the block unless ``kept``
    (the job was created), so a refused, failed, cancelled or replayed (``Idempotency-Key``) request leaves
    no file behind."""

    def __init__(self, data_dir: Path, job_id: str) -> None:
        self.path = upload_dir(data_dir, job_id)
        self.kept = False

    def __enter__(self) -> "JobUpload":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.kept:
            shutil.rmtree(self.path, ignore_errors=True)  # one file: quick, and sure


def in_uploads(data_dir: Path, relative: str) -> bool:
    """Whether a spec's path leads into the uploads area, by name or through a symlink (or letter case)."""
    parts = PurePosixPath(relative).parts
    if parts and parts[0].lower() == UPLOAD_DIR:
        return True
    uploads = data_dir / UPLOAD_DIR
    if not uploads.exists():
        return False
    root = data_dir.resolve()
    path = (root / relative).resolve()
    if path.is_relative_to(uploads.resolve()):
        return True
    for parent in (path, *path.parents):  # a case-insensitive file system: "Uploads/x" is "uploads/x"
        if not parent.is_relative_to(root) or parent == root:
            break
        try:
            if os.path.samefile(parent, uploads):
                return True
        except OSError:
            continue
    return False


async def refuse_uploads_path(data_dir: Path, relative: str) -> None:
    """A 422 if a spec's ``source.path`` leads into the uploads area (an upload belongs to its job)."""
    if await asyncio.to_thread(in_uploads, data_dir, relative):
        unprocessable(
            "source.path",
            f"{relative!r} is in the uploads area: an uploaded dataset belongs to the job that "
            "received it; upload the file again, or put it elsewhere in the data dir",
        )


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


@dataclass(frozen=True)
class UploadRules:
    """What one route accepts with an upload."""

    recipe: str  # the one recipe an uploaded dataset may run
    recipe_message: str  # the 422 when the spec names another
    dataset: str  # what the 'file' part holds, for the 422 when it is missing
    suffixes: Mapping[str, str]  # source.format -> the stored file's suffix (else the uploaded name's)
    file_description: str  # for the OpenAPI document
    spec_description: str
    spec_optional: bool = False  # a missing 'spec' part, or its missing recipe, means ``recipe``

    def openapi(self, json_schema: dict[str, Any]) -> dict[str, Any]:
        """The route's ``openapi_extra``: the spec as JSON (``json_schema``), or the file and the spec as a form."""
        form = {
            "type": "object",
            "required": ["file"] if self.spec_optional else ["file", "spec"],
            "properties": {
                "file": {"type": "string", "format": "binary", "description": self.file_description},
                "spec": {"type": "string", "description": self.spec_description},
            },
        }
        content = {"application/json": {"schema": json_schema}, "multipart/form-data": {"schema": form}}
        return {"requestBody": {"required": True, "content": content}}


@dataclass(frozen=True)
class Upload:
    """A received upload: the spec's JSON (its ``source.path`` set to where the file goes) and the file,
    still at its ``.part`` path until the spec has validated."""

    body: dict[str, Any]
    part_path: Path
    digest: str  # the form's fingerprint (``UploadForm.digest``)

    async def keep(self, data_dir: Path) -> None:
        await asyncio.to_thread(self.part_path.rename, data_dir / self.body["source"]["path"])


async def receive_upload(request: Request, job_id: str, settings: Settings, rules: UploadRules) -> Upload:
    """Stream a multipart request's file to the job's upload directory and read its ``spec`` part."""
    cap = int(settings.max_upload_mb * (1 << 20))
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap + FIELDS_LIMIT:
        too_large(cap)  # refused before a byte of it is read
    form = UploadForm(upload_dir(settings.data_dir, job_id) / f"{UPLOAD_STEM}.part", cap)
    await form.receive(request)
    if form.filename is None:
        unprocessable("file", f"a multipart request needs {rules.dataset} as the 'file' part")
    if form.spec is None and not rules.spec_optional:
        unprocessable("spec", "a multipart request needs the job spec as JSON text in the 'spec' part")
    raw = (form.spec or b"{}") if rules.spec_optional else (form.spec or b"")  # (a required spec is not None here)
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        unprocessable("spec", f"not valid JSON: {exc}")
    if rules.spec_optional and isinstance(body, dict):
        body.setdefault("recipe", rules.recipe)
    if not isinstance(body, dict) or body.get("recipe") != rules.recipe:
        unprocessable("spec.recipe", rules.recipe_message)
    source = body.setdefault("source", {})
    if not isinstance(source, dict) or "path" in source:
        unprocessable("source.path", "give either an uploaded file or source.path, not both")
    suffix = rules.suffixes.get(str(source.get("format")), PurePosixPath(form.filename).suffix.lower())
    source["path"] = f"{UPLOAD_DIR}/{job_id}/{UPLOAD_STEM}{suffix}"
    return Upload(body, form.part_path, form.digest)
