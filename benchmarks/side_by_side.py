"""wasillama's backends next to native llama.cpp on the same models, interleaved in one run; writes
docs/benchmarks.md (tables), docs/benchmarks.svg (plot) and docs/benchmarks.json (raw samples).

    python benchmarks/side_by_side.py [--threads 1,2] [-r 5] [-p 512] [-n 128] [--models smollm2 Q4_0 ...]
                                      [--out-dir docs] [--no-startup] [--no-embeddings] [--note TEXT]
    wasillama bench --side-by-side [-r N] [-t N] [-- any option above]

Per model (SmolLM2-135M Q4_1, the default model, and the synthetic Llama-3.2-1B-shaped Q4_0, Q8_0,
Q4_K_M and F16 of benchmarks/synthetic_models.py), per thread count, repetition by repetition:
native llama-bench of the default build (GGML_NATIVE=ON), native llama-bench of the portable AVX2
build, the wasm backend, and the native plugin where it is installed; pp and tg as llama-bench
defines them (wasillama.bench). Then per model, in child processes (benchmarks/startup.py): memory,
cold and warm start. Then the MiniLM embedding table (benchmarks/embedding_bench.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import embedding_bench  # noqa: E402
import report  # noqa: E402
from synthetic_models import BENCH_TYPES, bench_models, file_sha256, native_bin  # noqa: E402

ORDER = ("native", "avx2", "wasm", "plugin")  # the engines of one round, in the order they run
NOTABLE_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def log(msg: str) -> None:
    print(f"[side_by_side] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BenchModel:
    model: str
    type: str
    path: Path
    sha256: str
    size_bytes: int


def resolve_models(keys: list[str]) -> list[BenchModel]:
    """"smollm2", a synthetic type (Q4_0, ...) or a GGUF path, in the order given."""
    types = [k for k in keys if k in BENCH_TYPES]
    synthetic = {m.type: m for m in bench_models(types)} if types else {}
    out = []
    for key in keys:
        if key == "smollm2":
            from wasillama.default_model import GGUF_SHA256, default_model_path

            path = default_model_path()
            out.append(BenchModel("SmolLM2-135M", "Q4_1", path, GGUF_SHA256, path.stat().st_size))
        elif key in synthetic:
            m = synthetic[key]
            out.append(BenchModel(f"Llama-3.2-1B-shaped x{m.n_layer}", m.type, m.path, m.sha256, m.size_bytes))
        else:
            path = Path(key)
            out.append(BenchModel(path.stem, "?", path, file_sha256(path), path.stat().st_size))
    return out


Runner = Callable[[BenchModel, int], list[Any]]  # (model, threads) -> [BenchResult] of one repetition


def _engines(model: BenchModel, builds: dict[str, Path], n_prompt: int, n_gen: int, with_plugin: bool,
             stack: list[Any]) -> dict[str, Runner]:
    """One-repetition runners per engine; the wasm and plugin Models stay loaded (closed via stack)."""
    import wasillama
    from wasillama.bench import run_bench, run_llama_bench

    def llama_bench(cpu: str) -> Runner:
        binary = str(builds[cpu] / "llama-bench")
        return lambda m, t: run_llama_bench(binary, str(m.path), n_prompt=n_prompt, n_gen=n_gen, repetitions=1,
                                            threads=t)

    def ours(backend: str) -> Runner:
        loaded = wasillama.Model.load(model.path, backend=backend, trust_model=True)  # type: ignore[arg-type]
        stack.append(loaded)
        return lambda m, t: run_bench(loaded, n_prompt=n_prompt, n_gen=n_gen, repetitions=1, n_threads=t)

    engines = {"native": llama_bench("native"), "avx2": llama_bench("avx2"), "wasm": ours("wasm")}
    if with_plugin:
        engines["plugin"] = ours("native")
    return engines


def _rounds(m: BenchModel, t: int, engines: dict[str, Runner], repetitions: int,
            errors: list[str]) -> dict[str, dict[str, list[float]]]:
    """{test: {engine: samples}}: one repetition of each engine in turn, `repetitions` times. An
    engine that fails is left out of the later rounds and named in `errors`."""
    samples: dict[str, dict[str, list[float]]] = {}
    failed: set[str] = set()
    for rep in range(repetitions):
        for name in (n for n in ORDER if n in engines and n not in failed):
            try:
                results = engines[name](m, t)
            except (subprocess.CalledProcessError, OSError) as e:  # a comparator that dies (SIGILL...)
                failed.add(name)
                errors.append(f"{m.model} {m.type} t={t} {name}: {e}")
                log(errors[-1])
                continue
            for r in results:
                samples.setdefault(r.test, {}).setdefault(name, []).extend(r.tokens_per_second)
            log(f"{m.model} {m.type} t={t} rep {rep + 1}/{repetitions} {name}: "
                + ", ".join(f"{r.test} {r.tokens_per_second[0]:.1f}" for r in results))
    return samples


def measure_speed(models: list[BenchModel], threads: list[int], repetitions: int,
                  engines_for: Callable[[BenchModel, list[Any]], dict[str, Runner]],
                  errors: list[str]) -> list[dict[str, Any]]:
    """Rows of {model, type, test, threads, samples: {engine: [t/s per repetition]}}, model by model."""
    rows: list[dict[str, Any]] = []
    for m in models:
        stack: list[Any] = []  # Models the engines hold open for this model's rounds
        try:
            engines = engines_for(m, stack)
            for t in threads:
                rows += [{"model": m.model, "type": m.type, "test": test, "threads": t, "samples": s}
                         for test, s in _rounds(m, t, engines, repetitions, errors).items()]
        finally:
            for loaded in stack:
                loaded.close()
    return rows


def _child(model: Path, backend: str, cache: str | None, n_ctx: int, prompt_tokens: int,
           extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """benchmarks/startup.py in a fresh process; `cache` replaces WASILLAMA_CACHE for it."""
    env = dict(os.environ)
    if cache is not None:
        env["WASILLAMA_CACHE"] = cache
    cmd = [sys.executable, str(HERE / "startup.py"), str(model), "--backend", backend, "--n-ctx", str(n_ctx),
           "--prompt-tokens", str(prompt_tokens), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def measure_startup(models: list[BenchModel], n_prompt: int, n_gen: int, with_plugin: bool) -> list[dict[str, Any]]:
    """Per model: wasm with an empty compiled-module cache (cold), again with it filled (warm; its
    memory is the one reported), and the plugin."""
    n_ctx = n_prompt + n_gen + 16  # what run_bench's context holds
    rows = []
    for m in models:
        with tempfile.TemporaryDirectory(prefix="wasillama-cold-") as cache:
            row: dict[str, Any] = {"model": m.model, "type": m.type,
                                   "wasm_cold": _child(m.path, "wasm", cache, n_ctx, 0),
                                   "wasm_warm": _child(m.path, "wasm", cache, n_ctx, n_prompt)}
        if with_plugin:
            row["plugin"] = _child(m.path, "native", None, n_ctx, n_prompt)
        log(f"start-up {m.model} {m.type}: cold {row['wasm_cold']['t_first_token_s']:.2f} s, "
            f"warm {row['wasm_warm']['t_first_token_s']:.2f} s, peak RSS "
            f"{row['wasm_warm']['mem_peak']['hwm'] / 2**20:.0f} MiB")
        rows.append(row)
    return rows


def measure_embeddings(builds: dict[str, Path], threads: int, repetitions: int, with_plugin: bool,
                       errors: list[str]) -> dict[str, Any]:
    from wasillama.embedder import MAX_TEXT_TOKENS, N_SEQ

    engines: dict[str, Any] = {}
    model = embedding_bench.model_path()
    backends = [("wasm", "wasm"), *([("plugin", "native")] if with_plugin else [])]
    for name, backend in backends:
        engines[name] = embedding_bench.in_process(backend, threads, repetitions)
        idle = _child(model, backend, None, N_SEQ * MAX_TEXT_TOKENS, 0, ("--embeddings", "--n-seq", str(N_SEQ)))
        engines[name]["idle_rss"] = idle["mem_idle"]["rss"]
        log(f"embeddings {name}: done")
    with tempfile.TemporaryDirectory() as folder:
        for name, cpu in (("llama-embedding default", "native"), ("llama-embedding AVX2", "avx2")):
            try:
                engines[name] = embedding_bench.llama_embedding(builds[cpu] / "llama-embedding", threads,
                                                                repetitions, Path(folder))
                log(f"embeddings {name}: done")
            except (RuntimeError, OSError) as e:
                errors.append(f"embeddings {name}: {e}")
                log(errors[-1])
    return {"model": model.name, "threads": threads, "latency_runs": embedding_bench.LATENCY_RUNS,
            "warmup_runs": embedding_bench.WARMUP_RUNS, "engines": engines}


def _plugin_summary() -> tuple[bool, str]:
    from wasillama.backend import installed_plugins, load_plugin

    if "native" not in installed_plugins():
        return False, "not installed"
    import wasillama_native

    info = wasillama_native.build_info()
    plugin = load_plugin("native")
    backend = plugin.create()
    try:
        variant = getattr(getattr(getattr(backend, "transport", None), "cpu", None), "variant", "?")
    finally:
        if plugin.per_model:
            backend.close()
    return True, (f"wasillama-native, CPU variant {variant} of {info.get('cpu_variants')} "
                  f"(build {info.get('cpu_build')}, kernels {info.get('cpu_kernels')}, {info.get('compiler')})")


def machine(plugin: str, builds: dict[str, Path], started: float) -> dict[str, Any]:
    """What the doc says about where it ran; `builds`: bin folders of the native builds."""
    from wasillama.wasm.engine import compiled_module, wasmtime_version

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    flags = set(fields.get("flags\t\t", fields.get("flags", "")).split())
    mem = Path("/proc/meminfo").read_text().split()[1] if Path("/proc/meminfo").exists() else "0"
    stamps = {cpu: (b.parent / ".wasillama-stamp").read_text().partition(" targets=")[0] for cpu, b in builds.items()}
    flags_of = {cpu: " ".join(w for w in stamp.split() if not w.startswith(("src=", "commit=")))
                for cpu, stamp in stamps.items()}
    module = compiled_module()
    threads = any(i.module == "wasi" and i.name == "thread-spawn" for i in module.module.imports)
    commit = (ROOT / "wasm" / "LLAMA_CPP_COMMIT").read_text().strip()
    return {"cpu": fields.get("model name\t", fields.get("model name", platform.processor())).strip(),
            "cores": os.cpu_count(), "cpu_flags": " ".join(f for f in NOTABLE_FLAGS if f in flags) or "?",
            "memory_gib": int(mem) / 2**20, "os": platform.platform(), "python": platform.python_version(),
            "wasmtime": wasmtime_version(), "llama_cpp_commit": commit,
            "wasm_sha256": module.module_sha256, "wasm_threads": threads, "native_builds": flags_of, "plugin": plugin,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "duration_s": time.time() - started}


DEFAULT_MODELS = ["smollm2", *BENCH_TYPES]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                    help=f"smollm2, synthetic types ({', '.join(BENCH_TYPES)}) or GGUF paths")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    ap.add_argument("--no-startup", action="store_true", help="skip memory and start-up")
    ap.add_argument("--no-embeddings", action="store_true", help="skip the MiniLM table")
    ap.add_argument("--note", default="", help="a line for the doc's machine section")
    args = ap.parse_args(argv)
    from wasillama.paths import wasm_module_path

    with tempfile.TemporaryDirectory(prefix="wasillama-bench-") as frozen:
        # One llama.wasm for the whole run, children included, even if wasm/ is rebuilt meanwhile.
        shutil.copyfile(wasm_module_path(), Path(frozen) / "llama.wasm")
        os.environ["WASILLAMA_WASM"] = str(Path(frozen) / "llama.wasm")
        return run(args)


def run(args: argparse.Namespace) -> int:
    threads = [int(t) for t in args.threads.split(",")]
    started = time.time()
    with_plugin, plugin = _plugin_summary()
    builds = {cpu: native_bin(cpu) for cpu in ("native", "avx2")}  # built once, before anything is timed
    models = resolve_models(args.models)
    errors: list[str] = []
    results: dict[str, Any] = {
        "settings": {"repetitions": args.repetitions, "n_prompt": args.n_prompt, "n_gen": args.n_gen,
                     "threads": threads, "note": args.note, "command": sys.argv,
                     "partial": args.models != DEFAULT_MODELS or args.no_startup or args.no_embeddings},
        "models": [{**asdict(m), "path": str(m.path)} for m in models],
        "speed": measure_speed(models, threads, args.repetitions,
                               lambda m, stack: _engines(m, builds, args.n_prompt, args.n_gen, with_plugin, stack),
                               errors)}
    if not args.no_startup:
        results["startup"] = measure_startup(models, args.n_prompt, args.n_gen, with_plugin)
    if not args.no_embeddings:
        results["embeddings"] = measure_embeddings(builds, min(threads), args.repetitions, with_plugin, errors)
    results["errors"] = errors
    results["machine"] = machine(plugin, builds, started)
    report.write_doc(results, args.out_dir)
    print(report.speed_table(results["speed"]))
    log(f"wrote {args.out_dir / 'benchmarks.md'}, benchmarks.svg and benchmarks.json")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
