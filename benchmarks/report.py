"""docs/benchmarks.md from benchmarks/side_by_side.py's results: markdown tables, the page around
them and the SVG plot, all from the JSON of raw samples it writes, so a saved run can be rendered
again without measuring:

    python benchmarks/report.py docs/benchmarks.json [OUT_DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Column keys of the speed table, in the order they run in each round.
ENGINES = {"native": "native default", "avx2": "native AVX2", "wasm": "wasm", "plugin": "plugin"}
MIB = 2**20
NONE = "-"  # an engine or a part that did not run
DASH = "\u2013"  # of a min-max range


def fmt(x: float) -> str:
    """Three significant digits or so, whatever the magnitude."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def cell(samples: Sequence[float] | None) -> str:
    """Median (min-max) of the samples, or NONE for an engine that did not run."""
    if not samples:
        return NONE
    if len(samples) == 1:
        return fmt(samples[0])
    return f"{fmt(median(samples))} ({fmt(min(samples))}{DASH}{fmt(max(samples))})"


def ratio(a: Sequence[float] | None, b: Sequence[float] | None) -> str:
    return f"{median(a) / median(b):.2f}" if a and b else NONE


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def speed_table(speed: list[dict[str, Any]]) -> str:
    header = ["model", "type", "test", "threads", *(f"{v} t/s" for v in (
        ENGINES["wasm"], ENGINES["native"], ENGINES["avx2"], ENGINES["plugin"])), "wasm / default", "wasm / AVX2"]
    rows = []
    for r in speed:
        s = r["samples"]
        rows.append([r["model"], r["type"], r["test"], str(r["threads"]), cell(s.get("wasm")), cell(s.get("native")),
                     cell(s.get("avx2")), cell(s.get("plugin")), ratio(s.get("wasm"), s.get("native")),
                     ratio(s.get("wasm"), s.get("avx2"))])
    return table(header, rows, "llllrrrrrr")


def _mib(n: float | None) -> str:
    return NONE if n is None else fmt(n / MIB)


def memory_table(startup: list[dict[str, Any]]) -> str:
    header = ["model", "type", "GGUF MiB", "KV MiB (n_ctx)", "GGUF + KV MiB", "wasm idle RSS", "wasm peak RSS",
              "plugin idle RSS", "plugin peak RSS"]
    rows = []
    for r in startup:
        warm, plugin = r.get("wasm_warm") or {}, r.get("plugin") or {}
        probe = warm or plugin
        size, kv = probe.get("size_bytes"), probe.get("kv_bytes")
        rows.append([r["model"], r["type"], _mib(size), f"{_mib(kv)} ({probe.get('n_ctx', NONE)})",
                     _mib(size + kv if size is not None and kv is not None else None),
                     _mib(warm.get("mem_idle", {}).get("rss")), _mib(warm.get("mem_peak", {}).get("hwm")),
                     _mib(plugin.get("mem_idle", {}).get("rss")), _mib(plugin.get("mem_peak", {}).get("hwm"))])
    return table(header, rows, "llrrrrrrr")


def _ms(probe: dict[str, Any] | None, key: str) -> str:
    return NONE if not probe or key not in probe else f"{probe[key] * 1e3:.0f}"


def startup_table(startup: list[dict[str, Any]]) -> str:
    header = ["model", "type", "wasm cold: load ms", "cold: + first token", "of which compile", "wasm warm: load ms",
              "warm: + first token", "plugin: load ms", "plugin: + first token"]
    rows = []
    for r in startup:
        cold, warm, plugin = r.get("wasm_cold"), r.get("wasm_warm"), r.get("plugin")
        compile_ms = f"{cold['module_seconds'] * 1e3:.0f}" if cold and not cold.get("module_from_cache") else NONE
        rows.append([r["model"], r["type"], _ms(cold, "t_load_s"), _ms(cold, "t_first_token_s"), compile_ms,
                     _ms(warm, "t_load_s"), _ms(warm, "t_first_token_s"), _ms(plugin, "t_load_s"),
                     _ms(plugin, "t_first_token_s")])
    return table(header, rows, "llrrrrrrr")


EMBED_ROWS = (("idle RSS, MiB", "idle_rss"), ("P50 latency, 9-word doc, ms", "latency_short"),
              ("P50 latency, 49-word doc, ms", "latency_long"), ("96 short docs, docs/s", "batch_short"),
              ("96 long docs, docs/s", "batch_long"))


def embedding_table(emb: dict[str, Any]) -> str:
    engines = [k for k in ("wasm", "plugin", "llama-embedding default", "llama-embedding AVX2") if k in emb["engines"]]
    rows = []
    for label, key in EMBED_ROWS:
        row = [label]
        for e in engines:
            r = emb["engines"][e]
            if key == "idle_rss":
                value = r.get("idle_rss")
                row.append(_mib(value) if value is not None else f"{_mib(r.get('idle_rss_single_doc'))} (peak)")
            elif key.startswith("latency"):
                row.append(f"{median(r[key]) * 1e3:.1f}" if r.get(key) else NONE)
            else:
                row.append(cell(r.get(key)))
        rows.append(row)
    return table(["", *engines], rows, "l" + "r" * len(engines))


def _machine(results: dict[str, Any]) -> str:
    m, st = results["machine"], results["settings"]
    lines = [f"- CPU: {m['cpu']} ({m['cores']} logical cores; flags of note: {m['cpu_flags']}), "
             f"{m['memory_gib']:.0f} GiB RAM, {m['os']}",
             f"- Python {m['python']}, wasmtime {m['wasmtime']}, llama.cpp {m['llama_cpp_commit'][:12]} (pinned), "
             f"llama.wasm sha256 {m['wasm_sha256'][:16]}…",
             f"- native default: `{m['native_builds'].get('native', NONE)}`",
             f"- native AVX2: `{m['native_builds'].get('avx2', NONE)}`",
             f"- plugin: {m['plugin']}",
             f"- run: {m['date']}, {st['repetitions']} repetition(s), pp{st['n_prompt']} / tg{st['n_gen']}, "
             f"threads {', '.join(map(str, st['threads']))}, {m['duration_s'] / 60:.0f} min"]
    if st.get("note"):
        lines.append(f"- note: {st['note']}")
    return "\n".join(lines)


def _models(results: dict[str, Any]) -> str:
    return "\n".join(f"- {m['model']} {m['type']}: `{Path(m['path']).name}`, {m['size_bytes'] / MIB:.0f} MiB, "
                     f"sha256 `{m['sha256']}`" for m in results["models"])


DOC = """# Benchmarks: the wasm backend next to native llama.cpp

<!-- Generated by benchmarks/side_by_side.py (page: benchmarks/report.py). Edit those, not this file. -->

Everything on this page ({json_link} with every raw sample, and [benchmarks.svg](benchmarks.svg))
comes from one command, run from a source checkout:

    wasillama bench --side-by-side

(the same as `python benchmarks/side_by_side.py`; `-- --threads 1,2` adds thread counts, `-r N` sets
the repetitions, `-- --help` lists the rest). It builds what it needs once and caches it: the two
native llama.cpp builds (`scripts/build_native_reference.sh`, `WASILLAMA_REF_CPU=avx2` for the
second) and the synthetic models (`benchmarks/synthetic_models.py`, into
`~/.cache/wasillama/bench-models`).

{run_kind}

## Machine

{machine}

## Speed: pp{n_prompt} and tg{n_gen}

llama-bench's tests, in tokens/s: pp{n_prompt} evaluates {n_prompt} random tokens in one batch on
an empty cache, tg{n_gen} evaluates {n_gen} random tokens one at a time. Each engine warms up, then
runs one repetition per round; the rounds take the engines in turn (native default, native AVX2,
wasm, plugin), model by model, so whatever else loads the machine hits them alike. A cell is the
median (min-max) of the repetitions; the ratios are of medians. {wasm_threads}

{speed}

![tokens/s of wasm and both native builds per model and weight type](benchmarks.svg)

- **native default**: llama-bench built with `GGML_NATIVE=ON` (`-march=native`, AMX switched off:
  ggml's AMX matmul dies with SIGILL on these VMs).
- **native AVX2**: llama-bench built with `GGML_NATIVE=OFF` and SSE4.2/AVX/AVX2/BMI2/FMA/F16C, no
  AVX-512, no AMX: a distro's x86-64-v3 build, or a typical laptop.
- **wasm**: wasillama's sandboxed backend (`wasillama.bench.run_bench`, llama-bench's definitions).
- **plugin**: the wasillama-native plugin (the same shim and llama.cpp compiled natively, its CPU
  variant chosen at run time), through the same Python code as wasm.

Models (the synthetic ones: random weights from a fixed seed, Llama-3.2-1B's real shapes: n_embd
2048, 32 heads, 8 KV heads, n_ff 8192, rope theta 500000, rms eps 1e-5, tied embeddings, Llama 3's
128256-token vocabulary; 4 of its 16 layers; F16 written, the rest made from it by llama-quantize):

{models}

### Where wasm stays behind, and why

Per op (profiles of the guest with wasmtime's perf map), what separates the guest from the
native builds on one core:

- **Vector width and registers.** Wasm SIMD is 128 bits; the native default build runs 512-bit
  AVX-512 and the AVX2 build 256-bit AVX2 kernels. Cranelift gives a tile 16 vector registers.
- **No fused multiply-add.** F16 and F32 matrix products (and attention) take a multiply and an
  add per 4 lanes where AVX2 takes one FMA per 8. Relaxed SIMD's `relaxed_madd` fuses or not
  depending on the host, which would end bit-reproducibility (docs/parity.md), so it is not used.
- **No half-precision conversion.** Widening F16 weights takes about seven instructions per four
  values (one `vcvtph2ps` per eight natively). The F16 prompt tiles (wasm/patches/0009) widen each
  weight once per block of columns, but a token's decode pays it for every weight: F16 tg.
- **No signed byte dot product.** Q8_0 and Q4_0/Q4_1 products widen bytes to 16 bits and use
  `i32x4.dot_i16x8_s` (native: `vpmaddubsw` on 32 bytes, or AVX-512 VNNI's `vpdpbusd`). Q4_K and
  Q6_K use relaxed SIMD's i8 x u7 dot, exact because their quants fit in 7 bits.
- **Repacked weights.** The native default build repacks Q4_0 and Q4_K weights into interleaved
  blocks for its AVX2/AVX-512 GEMMs (ggml's CPU_REPACK); the guest multiplies the GGUF's layout,
  so its prompt tiles unpack each block once per tile row.
- **Deadlines.** Epoch interruption (per-call deadlines) adds a counter check to every loop.

## Memory

Resident memory of a fresh Python process (`benchmarks/startup.py`) that loaded the model and a
context of n_ctx tokens: idle (VmRSS, after one token) and the peak (VmHWM) after a
pp{n_prompt} decode, next to the GGUF's tensor bytes and the f16 KV cache of that context. The
process holds {import_mib} MiB after `import wasillama`, before any model.

{memory}

## Start-up

Fresh processes, times from just after `import wasillama` ({import_ms} ms): *load* is
`Model.load`, *+ first token* adds a context and one greedy token of a short prompt. **Cold**: the
compiled-module cache is empty (`WASILLAMA_CACHE` pointed at a new folder), so wasmtime compiles
llama.wasm (*of which compile*); **warm**: the next process, with that cache.

{startup}

## Embeddings: all-MiniLM-L6-v2 q8_0

The scenarios of the pure-Go GGUF runtime's README ([go-semantica](https://github.com/headlands-org/go-semantica)):
memory with the model loaded, P50 latency (of {latency_runs}, after {warmup_runs} warm-ups) of one
9-word and one 49-word document, and the throughput of a batch of 96 short (6-9 words) and of 96
long (49 words) documents, median (min-max) of {repetitions} batches; {threads} thread(s) for every
engine.

{embeddings}

- **wasm** and **plugin**: one Model and Context each, as `wasillama.embed` makes them (up to 8
  texts per decode, 1024 tokens); idle RSS of a fresh process holding them (`startup.py`).
- **llama-embedding**: llama.cpp's own tool from the two reference builds, a process per sample;
  its time is the "total time" libllama reports (after its warm-up: tokenize, decode, pool, print;
  no process start or model load), as its "prompt eval time" reads 0 for batches in this version;
  it packs up to 1024 tokens of any number of texts into one decode. Its memory is the peak RSS of
  a process that embedded one short text.
"""


WASM_THREADS = {
    True: "The wasm guest runs ggml's thread pool on host threads (wasi-threads' `thread-spawn`, "
          "implemented by the host: DESIGN §5).",
    False: "**The wasm guest computes on one thread whatever is asked** (this llama.wasm has no guest "
           "threads: ggml-cpu forces one under `__wasi__`, DESIGN §5), so only the threads=1 rows compare "
           "like with like."}


def write_doc(results: dict[str, Any], out_dir: Path) -> None:
    """benchmarks.md, benchmarks.svg and benchmarks.json in out_dir."""
    from svg_plot import render

    out_dir.mkdir(parents=True, exist_ok=True)
    st = results["settings"]
    write_json(results, out_dir / "benchmarks.json")
    threads = min(st["threads"])
    (out_dir / "benchmarks.svg").write_text(render(results["speed"], threads=threads,
                                                   title=f"tokens/s, {threads} thread(s): wasm vs native llama.cpp"))
    full = st["repetitions"] >= 5 and not st.get("partial")
    partial = ", not every model or part" if st.get("partial") else ""
    run_kind = ("A full run." if full else
                f"**A short run** ({st['repetitions']} repetition(s){partial}): the numbers show the shape, not the "
                "final figures; the command above makes the full table.")
    probes = [p for r in results.get("startup", []) for p in r.values() if isinstance(p, dict) and "mem_import" in p]
    emb = results.get("embeddings")
    doc = DOC.format(
        json_link="[benchmarks.json](benchmarks.json)", run_kind=run_kind, machine=_machine(results),
        wasm_threads=WASM_THREADS[bool(results["machine"].get("wasm_threads"))],
        n_prompt=st["n_prompt"], n_gen=st["n_gen"], speed=speed_table(results["speed"]), models=_models(results),
        memory=memory_table(results.get("startup", [])) if probes else "(not measured in this run)",
        startup=startup_table(results.get("startup", [])) if probes else "(not measured in this run)",
        import_mib=fmt(median([p["mem_import"]["rss"] / MIB for p in probes])) if probes else NONE,
        import_ms=f"{median([p['t_import_s'] for p in probes]) * 1e3:.0f}" if probes else NONE,
        embeddings=embedding_table(emb) if emb else "(not measured in this run)",
        latency_runs=emb["latency_runs"] if emb else NONE, warmup_runs=emb["warmup_runs"] if emb else NONE,
        repetitions=st["repetitions"], threads=emb["threads"] if emb else NONE)
    server = out_dir / "benchmarks-server.json"
    if server.is_file():  # benchmarks/server_load.py's last run
        from server_load import summary

        doc += "\n## Server under load\n\n" + summary(json.loads(server.read_text()))
    (out_dir / "benchmarks.md").write_text(doc)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results = json.loads(Path(args[0]).read_text())
    write_doc(results, Path(args[1]) if len(args) > 1 else Path(args[0]).parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
