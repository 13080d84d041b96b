"""Progress bars: the CLI draws them on a terminal (the first compile of llama.wasm, the model
load), and never with --quiet / --silent or when stderr is not a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from wasillama.paths import cache_dir

WASILLAMA = Path(sys.executable).parent / "wasillama"


def run_cli(args: list[str], *, tty: bool, cache: Path) -> tuple[int, str, str]:
    """The CLI with stdout on a pipe and stderr on a pseudo-terminal (or on a pipe)."""
    env = dict(os.environ, WASILLAMA_CACHE=str(cache))
    if not tty:
        p = subprocess.run([str(WASILLAMA), *args], capture_output=True, text=True, env=env, timeout=600)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns
    proc = subprocess.Popen([str(WASILLAMA), *args], stdout=subprocess.PIPE, stderr=slave, env=env, text=True)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait(timeout=600)
    os.close(master)
    return proc.returncode, out, err.decode("utf-8", "replace")


@pytest.fixture
def generate(synthetic_model: Path) -> list[str]:
    return ["run", "-m", str(synthetic_model), "--raw", "-p", "Once upon a time", "-n", "4", "--temp", "0"]


def test_a_terminal_gets_bars_for_the_first_compile_and_the_load(generate: list[str], tmp_path: Path) -> None:
    code, out, err = run_cli(generate, tty=True, cache=tmp_path / "fresh")  # nothing compiled yet
    assert code == 0, err
    assert "compiling llama.wasm (first run only)" in err
    assert f"loading {Path(generate[2]).name}" in err
    assert out.strip()  # the answer still goes to stdout, alone
    code, _, err = run_cli(generate, tty=True, cache=tmp_path / "fresh")
    assert code == 0 and "compiling" not in err and "loading" in err  # compiled once, loaded with a bar


@pytest.mark.parametrize("how", ["--quiet", "--silent", "not a terminal"])
def test_no_bars_when_quiet_or_not_a_terminal(generate: list[str], tmp_path: Path, how: str) -> None:
    args = generate if how == "not a terminal" else [*generate, how]
    code, out, err = run_cli(args, tty=how != "not a terminal", cache=cache_dir())
    assert code == 0, err
    assert "%|" not in err and "loading" not in err and "compiling" not in err
    assert out.strip()
