"""Soak: load, generate, close, over and over, and watch what the process holds.

    python benchmarks/soak.py [--cycles 1000] [--model PATH] [--tokens 8] [--rebuild]

Each cycle loads the model (default: the embedded default model) into a fresh sandbox, makes a
context, generates greedily, and closes both. Every --every cycles it prints the resident set
size, open file descriptors, threads and live Python objects. At the end it compares the last
sample with the one after the warm-up (--warmup cycles, while caches and allocator arenas fill):
RSS must stay within --rss-tolerance (5%), descriptors and threads must not grow, and every
cycle must generate the same tokens. Exit status 1 when any of that fails. Linux (/proc).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import wasillama


@dataclass(frozen=True)
class Sample:
    cycle: int
    rss_mib: float
    fds: int
    threads: int
    objects: int

    def row(self) -> str:
        return f"{self.cycle:>6} {self.rss_mib:>9.1f} {self.fds:>5} {self.threads:>7} {self.objects:>9}"


def sample(cycle: int) -> Sample:
    rss_kib = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    gc.collect()
    return Sample(cycle, rss_kib / 1024, len(os.listdir("/proc/self/fd")), threading.active_count(),
                  len(gc.get_objects()))


def cycle(model_path: Path, tokens: int, options: dict[str, object]) -> list[int]:
    with wasillama.Model.load(model_path, **options) as model, model.new_context(n_ctx=256) as ctx:  # type: ignore[arg-type]
        return ctx.generate("Once upon a time", max_tokens=tokens, temperature=0).tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: the embedded default model)")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--rss-tolerance", type=float, default=0.05)
    ap.add_argument("--rebuild", action="store_true", help="load with on_trap='rebuild' and max_memory")
    args = ap.parse_args(argv)
    if args.model is None:
        from wasillama.default_model import default_model_path
        args.model = default_model_path(quiet=True)
    options: dict[str, object] = {"on_trap": "rebuild", "max_memory": "1GiB"} if args.rebuild else {}

    print(f"soak: {args.cycles} cycles of load / generate {args.tokens} / close of {args.model.name}")
    print(f"{'cycle':>6} {'RSS MiB':>9} {'fds':>5} {'threads':>7} {'objects':>9}")
    start = time.monotonic()
    expected = cycle(args.model, args.tokens, options)
    samples = [sample(0)]
    print(samples[0].row())
    different = 0
    for i in range(1, args.cycles + 1):
        if cycle(args.model, args.tokens, options) != expected:
            different += 1
        if i % args.every == 0 or i == args.cycles:
            samples.append(sample(i))
            print(samples[-1].row(), flush=True)
    elapsed = time.monotonic() - start
    base = next((s for s in samples if s.cycle >= args.warmup), samples[0])
    last = samples[-1]
    growth = last.rss_mib / base.rss_mib - 1
    ok = abs(growth) <= args.rss_tolerance and last.fds <= base.fds and last.threads <= base.threads and not different
    print(f"{args.cycles} cycles in {elapsed:.0f} s ({elapsed / args.cycles * 1000:.0f} ms each); RSS "
          f"{base.rss_mib:.1f} MiB at cycle {base.cycle} -> {last.rss_mib:.1f} MiB ({growth:+.1%}); fds "
          f"{base.fds} -> {last.fds}; threads {base.threads} -> {last.threads}; objects {base.objects} -> "
          f"{last.objects}; {different} cycles generated other tokens: {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
