"""pytest plugin: a test that kills its process (SIGILL in a native kernel, SIGSEGV, ...) fails by
itself, with the signal named, instead of ending the whole run.

The suite runs under pytest-xdist (``-n 1`` in pyproject.toml): tests execute in a worker process
that xdist replaces when it dies, and reports the test it was running as failed. This plugin adds
what killed it: each worker points faulthandler at a file of its own, and when xdist reports a
crash, the controller reads that file ("Fatal Python error: Illegal instruction", the traceback)
into the failure report.
"""

from __future__ import annotations

import faulthandler
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import pytest

_DIR_VAR = "WASILLAMA_TEST_CRASH_DIR"
_SIGNALS = {  # faulthandler's wording -> the signal
    "Illegal instruction": "SIGILL",
    "Segmentation fault": "SIGSEGV",
    "Bus error": "SIGBUS",
    "Floating-point exception": "SIGFPE",
    "Floating point exception": "SIGFPE",
    "Aborted": "SIGABRT",
}
_log: IO[str] | None = None


@pytest.hookimpl(trylast=True)  # after pytest's own faulthandler plugin, which this replaces
def pytest_configure(config: pytest.Config) -> None:
    global _log
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        # The controller: workers start after this and inherit the folder through the environment.
        os.environ[_DIR_VAR] = tempfile.mkdtemp(prefix="wasillama-crash-")
    elif os.environ.get(_DIR_VAR):
        _log = open(Path(os.environ[_DIR_VAR]) / f"{worker}.log", "w", encoding="utf-8")  # noqa: SIM115
        faulthandler.enable(file=_log, all_threads=True)


def describe_crash(text: str) -> str:
    """'SIGILL (Illegal instruction)' from faulthandler's output, or '' when it names no signal."""
    for line in text.splitlines():
        if line.startswith("Fatal Python error: "):
            what = line.removeprefix("Fatal Python error: ").strip()
            return f"{_SIGNALS[what]} ({what})" if what in _SIGNALS else what
    return ""


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None)
    folder = os.environ.get(_DIR_VAR)
    if worker is None or not folder:
        return
    try:
        text = (Path(folder) / f"{worker}.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    what = describe_crash(text)
    report.longrepr = (f"{report.longrepr}: the worker process died with {what or 'an unknown signal'}\n\n"
                       f"{text[-6000:]}")
