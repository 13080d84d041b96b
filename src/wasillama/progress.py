"""Progress bars on stderr for the long first steps: downloads (the hub's own tqdm bars), the
first compile of llama.wasm, and reading a model into the sandbox, all drawn by tqdm so they
look alike. Shown only when asked and stderr is a terminal."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


def wanted(quiet: bool = False) -> bool:
    """Whether to draw bars: not quiet, and stderr is a terminal (not a log file or a pipe)."""
    return not quiet and sys.stderr.isatty()


def _size() -> dict[str, int]:
    # a terminal that reports no size (a fresh pty) would make tqdm draw nothing at all
    size = shutil.get_terminal_size()
    return {"ncols": size.columns or 80, "nrows": size.lines or 24}


@contextmanager
def timer(desc: str) -> Iterator[None]:
    """A bar without a total (the step cannot say how far it is), ticking its elapsed time."""
    from tqdm.auto import tqdm  # only when a bar is drawn: importing wasillama stays light

    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr, leave=False, **_size())
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.5):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        bar.close()


@contextmanager
def load_bar(desc: str, size: int) -> Iterator[Callable[[float], None]]:
    """A bar over `size` bytes, moved by the fraction-of-the-file callback Model.load takes."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, total=size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False,
               bar_format=BAR_FORMAT, **_size())

    def update(fraction: float) -> None:
        bar.update(int(fraction * size) - bar.n)

    try:
        yield update
    finally:
        bar.close()


def compile_wasm_module() -> None:
    """Compile llama.wasm now (under a timer bar) when neither this process nor the on-disk
    cache has it compiled: the first run after an install takes tens of seconds here."""
    from .wasm.engine import compiled_module, is_compiled

    if is_compiled():
        return
    with timer("compiling llama.wasm (first run only)"):
        compiled_module()
