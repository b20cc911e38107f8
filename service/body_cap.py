"""The request size cap: a body over ``max_body_kb`` is a 413 before it is read into memory.

A pure ASGI middleware, so it sees the body as it arrives rather than after a framework has gathered it: a
``Content-Length`` over the cap is refused before a byte is read; a body without one (chunked) is counted as
the app reads it, and the moment it passes the cap the middleware answers 413 itself and tells the app the
client left (whatever the app answers after that is dropped). Multipart uploads to the routes that take one
(``uploads``) are left to their own cap (``max_upload_mb``, ``service.uploads``), which streams them to disk;
a multipart body anywhere else is capped like any other (a JSON route would read it whole).
"""

from collections.abc import Collection

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.errors import TooLarge


class BodyCap:
    def __init__(self, app: ASGIApp, max_bytes: int, uploads: Collection[str]) -> None:
        self.app, self.max_bytes, self.uploads = app, max_bytes, uploads

    def _refusal(self) -> JSONResponse:
        error = TooLarge(
            f"the request body is over the server's cap of {self.max_bytes >> 10} KiB (SKILLMIX_MAX_BODY_KB); "
            "a dataset goes as a multipart upload or by source.path"
        )
        return JSONResponse(error.json_body(), status_code=error.status, headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] in self.uploads and _is_multipart(scope)):
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await self._refusal()(scope, receive, send)
            return
        seen = 0
        refused = started = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refusal()(scope, receive, send)
                    return {"type": "http.disconnect"}  # the app stops reading, as if the client had left
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer
            started = True
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except Exception:
            if not refused:
                raise  # (after a refusal: the app's reaction to the "disconnect", already answered)


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value).lower().startswith(b"multipart/form-data")
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
