"""Loopback ports for the processes that the quick start, tests and benchmarks start, and waiting for them."""

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    """A port free right now; a process binding it later may still lose a race, so callers retry."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Blocking, for test and benchmark drivers (never on an event loop); fails fast if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering at {url}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"nothing answered at {url} within {timeout}s")
