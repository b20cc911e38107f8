"""OpenAI's Files + Batch API, as the batch manager needs it: upload, create, get, cancel, list, download.

Few calls (a handful per file of up to 50,000 requests), so httpx with a timeout on every call; every failure
leaves as ``ProviderTransient`` (retry later with backoff) or ``ProviderRejected`` (the provider said no).
"""

import os
from typing import Any

import httpx
import orjson

from schemas.errors import SkillmixError
from schemas.settings import EndpointSettings
from workers.llm.errors import LLMMissingKey

TIMEOUT = httpx.Timeout(120.0, connect=10.0)  # uploads and downloads of up to 200 MB take a while
LIST_PAGE = 100


class ProviderError(SkillmixError):
    """A Files / Batch API call failed."""


class ProviderTransient(ProviderError):
    """Unreachable, timed out, 5xx or 429: try again later."""


class ProviderRejected(ProviderError):
    """A 4xx other than 429: the provider refused the request (the message carries its error)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.http_status = status


class BatchAPI:
    """One endpoint's ``/v1/files`` and ``/v1/batches``."""

    def __init__(self, name: str, endpoint: EndpointSettings) -> None:
        self.name, self.endpoint = name, endpoint
        headers = {}
        if endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env)
            if not key:
                raise LLMMissingKey(endpoint.api_key_env)
            headers["authorization"] = f"Bearer {key}"
        self.http = httpx.AsyncClient(base_url=str(endpoint.base_url).rstrip("/"), headers=headers, timeout=TIMEOUT)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ProviderTransient(f"{self.name}: {method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise ProviderTransient(f"{self.name}: {method} {path}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise ProviderRejected(response.status_code, f"{self.name}: {method} {path}: {response.text}")
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._call(method, path, **kwargs)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ProviderTransient(f"{self.name}: {method} {path}: not JSON") from exc
        if not isinstance(data, dict):
            raise ProviderTransient(f"{self.name}: {method} {path}: not a JSON object")
        return data

    async def upload(self, content: bytes, filename: str) -> str:
        files = {"file": (filename, content, "application/jsonl")}
        data = await self._json("POST", "/files", files=files, data={"purpose": "batch"})
        return str(data["id"])

    async def create(self, input_file_id: str, metadata: dict[str, str], window_h: int) -> dict[str, Any]:
        body = {
            "input_file_id": input_file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": f"{window_h}h",
            "metadata": metadata,
        }
        return await self._json("POST", "/batches", json=body)

    async def get(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any] | None:
        try:
            return await self._json("POST", f"/batches/{batch_id}/cancel")
        except ProviderRejected as exc:
            if exc.http_status == 409:  # finished meanwhile: nothing to cancel
                return None
            raise

    async def find(self, key: str, value: str, created_after_s: float) -> dict[str, Any] | None:
        """The batch whose ``metadata[key]`` is ``value``, among those created after ``created_after_s``
        (newest first): a batch created by a worker that died before it could note the batch's id."""
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": LIST_PAGE}
            if after:
                params["after"] = after
            page = await self._json("GET", "/batches", params=params)
            data = page.get("data") or []
            for batch in data:
                if (batch.get("metadata") or {}).get(key) == value:
                    return dict(batch)
            if not page.get("has_more") or not data or float(data[-1].get("created_at", 0)) < created_after_s:
                return None
            after = str(data[-1]["id"])

    async def content(self, file_id: str) -> bytes:
        return (await self._call("GET", f"/files/{file_id}/content")).content

    async def delete_file(self, file_id: str) -> None:
        try:
            await self._call("DELETE", f"/files/{file_id}")
        except ProviderRejected as exc:
            if exc.http_status != 404:
                raise
