"""The failed-authentication throttle against a real API process (burst 3 per 2 s window, from 127.0.0.1).

A burst of bad keys is 401s, then 429 with ``Retry-After``; during the window a good key from the same address
is refused too (``service.auth._throttle`` says why: otherwise a guesser would still learn which guess was
right); successes neither count nor reset the count; the counter expires with the window, and then all is
fine again.
"""

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from arq.connections import ArqRedis

from store import keys
from tests import keyed
from tests.conftest import module_api, service_env

BURST, WINDOW_S = 3, 2
COUNTER = keys.auth_failures("127.0.0.1")
BAD = "smx_not-a-key-at-all-000000000000000000000000000000"


@pytest.fixture(scope="module")
def api_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = service_env(SKILLMIX_AUTH_FAIL_BURST=str(BURST), SKILLMIX_AUTH_FAIL_WINDOW_S=str(WINDOW_S))
    with module_api(tmp_path_factory, env) as url:
        yield url


@pytest.fixture
def api(api_process: str, redis: ArqRedis) -> str:
    return api_process


def jobs(api: str, key: str | None, **headers: str) -> httpx.Response:
    return keyed.get(f"{api}/v1/jobs", key=key, headers=headers)


async def test_a_burst_of_bad_keys_is_throttled_for_the_window_good_key_included(api: str, redis: ArqRedis) -> None:
    first = [jobs(api, BAD), jobs(api, None), jobs(api, None, Authorization="Basic x")]  # unknown, none, malformed
    assert [r.status_code for r in first] == [401] * BURST
    assert all(r.headers["www-authenticate"].startswith("Bearer") for r in first)
    assert 0 < await redis.ttl(COUNTER) <= WINDOW_S  # the counter expires with its window

    throttled = jobs(api, BAD)
    assert throttled.status_code == 429, throttled.text
    assert 1 <= int(throttled.headers["retry-after"]) <= WINDOW_S
    body = throttled.json()
    assert (body["quota"], body["limit"], body["used"]) == ("auth_failures", BURST, BURST)
    assert jobs(api, keyed.MEMBER).status_code == 429  # a good key from the same address too, during the window
    assert keyed.get(f"{api}/healthz", key=None).status_code == 200  # never keyed, never throttled

    await asyncio.sleep(int(throttled.headers["retry-after"]) + 0.2)
    assert await redis.exists(COUNTER) == 0
    assert jobs(api, keyed.MEMBER).status_code == 200
    assert jobs(api, BAD).status_code == 401  # a new window, counted afresh


async def test_successes_neither_count_nor_reset_the_failures(api: str, redis: ArqRedis) -> None:
    assert [jobs(api, keyed.MEMBER).status_code for _ in range(3 * BURST)] == [200] * (3 * BURST)
    assert await redis.exists(COUNTER) == 0
    assert [jobs(api, BAD).status_code for _ in range(BURST - 1)] == [401] * (BURST - 1)
    assert jobs(api, keyed.VIEWER).status_code == 200  # one's own key between guesses resets nothing
    assert jobs(api, BAD).status_code == 401
    assert jobs(api, keyed.VIEWER).status_code == 429


async def test_a_guesser_cannot_pick_its_address_with_x_forwarded_for(api: str, redis: ArqRedis) -> None:
    """No proxy is trusted by default (SKILLMIX_FORWARDED_ALLOW_IPS): the header changes nothing."""
    answers = [jobs(api, BAD, **{"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(BURST + 2)]
    assert answers == [401] * BURST + [429] * 2
    assert await redis.keys(keys.auth_failures("10.*")) == []
