"""The request size cap against a real API process (``SKILLMIX_MAX_BODY_KB=1``): a body over it is a 413 that
says so, answered before the body is read (by its Content-Length, or counted as a chunked body streams in);
an upload to a route that takes one keeps its own, larger cap."""

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from arq.connections import ArqRedis

from store import keys
from tests import keyed
from tests.conftest import module_api, service_env

CAP = 1024
ENDPOINTS = {"fake": {"base_url": "http://127.0.0.1:9/v1", "model": "fake-model"}}
BIG = {"recipe": "prompts", "prompts": ["Say something long. " * 20] * 5}  # ~2 KiB: over the cap
SMALL = {"recipe": "prompts", "prompts": ["Say hi."]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("data")
    with module_api(
        tmp_path_factory, service_env(ENDPOINTS, SKILLMIX_MAX_BODY_KB="1", SKILLMIX_DATA_DIR=str(data))
    ) as url:
        yield url, data


@pytest.fixture
def api(served: tuple[str, Path], redis: ArqRedis) -> str:
    return served[0]


def too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body"] and "1 KiB (SKILLMIX_MAX_BODY_KB)" in error["msg"]


def raw_exchange(api: str, head: str, body: bytes = b"") -> bytes:
    """Send a request head (and the start of a body) and read the answer, never finishing the body."""
    url = urlsplit(api)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


async def test_a_json_body_over_the_cap_is_a_413_and_creates_nothing(api: str, redis: ArqRedis) -> None:
    assert len(json.dumps(BIG)) > CAP > len(json.dumps(SMALL))
    too_large(keyed.post(f"{api}/v1/jobs", json=BIG))  # with a Content-Length

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        raw = json.dumps(BIG).encode()
        for at in range(0, len(raw), 256):
            yield raw[at : at + 256]

    chunked = keyed.post(f"{api}/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    too_large(chunked)
    too_large(keyed.patch(f"{api}/v1/endpoints/fake", json={"rpm": 1, "pad": "x" * CAP}, key=keyed.ADMIN))
    assert await redis.zcard(keys.JOBS_INDEX) == 0
    assert keyed.post(f"{api}/v1/jobs", json=SMALL).status_code == 201  # under the cap: as ever


def test_the_413_comes_before_the_body_is_read(api: str) -> None:
    """Only the head (and 2 KiB of a chunked body) is ever sent: the answer cannot have waited for the rest."""
    auth = f"Authorization: Bearer {keyed.MEMBER}\r\nHost: x\r\nContent-Type: application/json\r\n"
    announced = raw_exchange(api, f"POST /v1/jobs HTTP/1.1\r\n{auth}Content-Length: 1000000000\r\n")
    assert announced.startswith(b"HTTP/1.1 413"), announced
    part = b"x" * 2048
    streamed = raw_exchange(
        api, f"POST /v1/jobs HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (len(part), part)
    )
    assert streamed.startswith(b"HTTP/1.1 413"), streamed


async def test_uploads_keep_their_own_cap(served: tuple[str, Path], api: str, redis: ArqRedis) -> None:
    """A 20 KiB dataset uploads fine where uploads are taken; a multipart body elsewhere is capped as any other."""
    rows = "".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer {i}."}) + "\n" for i in range(500))
    assert len(rows) > 20 * CAP
    files = {"file": ("seed.jsonl", rows.encode()), "spec": (None, json.dumps({"recipe": "curate"}))}
    uploaded = keyed.post(f"{api}/v1/curate", files=files)
    assert uploaded.status_code == 201, uploaded.text
    too_large(keyed.post(f"{api}/v1/jobs", files=files))
    assert await redis.zcard(keys.JOBS_INDEX) == 1
