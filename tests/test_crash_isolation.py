"""A test that kills its process fails alone, with the signal named; the rest of the run goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize(("signal_name", "wording"), [("SIGILL", "Illegal instruction"),
                                                      ("SIGSEGV", "Segmentation fault")])
def test_a_killed_test_fails_alone_with_its_signal(tmp_path: Path, signal_name: str, wording: str) -> None:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f"""
        import os, signal

        def test_before():
            assert True

        def test_dies():
            os.kill(os.getpid(), signal.{signal_name})

        def test_after():
            assert True
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("WASILLAMA_TEST_CRASH_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "xdist", "-p", "crash_isolation", "-n", "1", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 2 passed" in out, out
    assert "crashed while running 'test_inner.py::test_dies'" in out, out
    assert f"died with {signal_name} ({wording})" in out, out
    assert "test_inner.py\", line 8 in test_dies" in out, out  # faulthandler's traceback, in the report
