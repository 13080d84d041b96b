"""The embedding scenarios of the pure-Go GGUF runtime's README (headlands-org/go-semantica), for
all-MiniLM-L6-v2 q8_0 (the model wasillama.embed ships): idle memory with the model loaded, P50
latency of one 9-word and one 49-word document, and throughput of a batch of 96 short and of 96
long documents. Used by benchmarks/side_by_side.py.

Engines: wasillama's wasm backend and its native plugin (llama.cpp compiled natively, behind the
same Python API and the same batching: wasillama.embed's context, up to 8 texts per decode), and
llama.cpp's own llama-embedding from the reference builds (one process per sample; its time is the
"total time" libllama reports: from the end of its warm-up decode to the end, so tokenizing,
decoding, pooling and printing the vectors, without process start-up or model load; its "prompt
eval time" reads 0 for batches of texts in this version; its memory is the process's peak RSS; it
packs up to 1024 tokens of any number of texts per decode).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

SHORT_DOC = "The quick brown fox jumps over the lazy dog"  # 9 words
LONG_DOC = ("Embedding models turn a piece of text into a vector of numbers, so texts with similar meanings end up "
            "close together. Search engines, recommendation systems and chat assistants use these vectors to find "
            "relevant documents, even when the words in a query differ from the words in an answer.")  # 49 words
SHORT_DOCS = ("Rain is expected across the north tomorrow", "The library opens at nine on weekdays",
              "She sold her old bicycle to a neighbour", "Fresh bread tastes best while still warm",
              "Our team shipped the new release today")
BATCH = 96
LATENCY_RUNS = 20
WARMUP_RUNS = 5
N_BATCH = 1024  # tokens per decode, both ways


def model_path() -> Path:
    from wasillama.embedder import MODEL_FILE

    return Path(str(resources.files("wasillama.models").joinpath(MODEL_FILE)))


def batches() -> dict[str, list[str]]:
    return {"short": [SHORT_DOCS[i % len(SHORT_DOCS)] for i in range(BATCH)], "long": [LONG_DOC] * BATCH}


def in_process(backend: str, threads: int, repetitions: int) -> dict[str, Any]:
    """Latency samples (s) of single documents and docs/s of the batches, one Model and Context."""
    import wasillama
    from wasillama.embedder import MAX_TEXT_TOKENS, N_SEQ

    out: dict[str, Any] = {}
    loaded = wasillama.Model.load(model_path(), backend=backend, trust_model=True)  # type: ignore[arg-type]
    with loaded as model, model.new_context(n_ctx=N_SEQ * MAX_TEXT_TOKENS, n_batch=N_BATCH, n_seq_max=N_SEQ,
                                            embeddings=True, n_threads=threads, n_threads_batch=threads) as ctx:
        for name, doc in (("latency_short", SHORT_DOC), ("latency_long", LONG_DOC)):
            for _ in range(WARMUP_RUNS):
                ctx.embed(doc)
            samples = []
            for _ in range(LATENCY_RUNS):
                t = time.perf_counter()
                ctx.embed(doc)
                samples.append(time.perf_counter() - t)
            out[name] = samples
        for name, docs in batches().items():
            ctx.embed_batch(docs[:N_SEQ])  # warm-up
            rates = []
            for _ in range(repetitions):
                t = time.perf_counter()
                ctx.embed_batch(docs)
                rates.append(len(docs) / (time.perf_counter() - t))
            out[f"batch_{name}"] = rates
    return out


# Through a small Python in between: the ru_maxrss this process's own wait4 gets would include
# its own size (Linux carries the spawning process's high-water mark across fork and exec).
_PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")
_TOTAL = re.compile(r"llama_perf_context_print:\s+total time =\s*([\d.]+) ms")


def _llama_embedding(binary: Path, docs: list[str], threads: int, folder: Path, tries: int = 5) -> tuple[float, int]:
    """(seconds libllama reports as its total time, peak RSS in bytes) of one llama-embedding run.
    Its log is written by a thread that exit can cut short, losing the timings now and then: then
    it runs again."""
    for _ in range(tries - 1):
        try:
            return _llama_embedding_once(binary, docs, threads, folder)
        except LookupError:
            pass
    return _llama_embedding_once(binary, docs, threads, folder)


def _llama_embedding_once(binary: Path, docs: list[str], threads: int, folder: Path) -> tuple[float, int]:
    prompts = folder / "docs.txt"
    prompts.write_text("\n".join(docs))
    cmd = [str(binary), "-m", str(model_path()), "-f", str(prompts), "-t", str(threads), "-tb", str(threads),
           "-c", str(N_BATCH), "-b", str(N_BATCH), "-ub", str(N_BATCH), "--embd-normalize", "2",
           "-lv", "4"]  # libllama's INFO lines, where its timings are
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    match = _TOTAL.search(proc.stderr)
    if match is None:
        raise LookupError(f"{' '.join(cmd)}: no timings in its log")
    peak = int(proc.stderr.strip().splitlines()[-1])
    return float(match.group(1)) / 1e3, peak if sys.platform == "darwin" else peak * 1024


def llama_embedding(binary: Path, threads: int, repetitions: int, folder: Path) -> dict[str, Any]:
    """The same scenarios with llama.cpp's llama-embedding: a process per sample."""
    out: dict[str, Any] = {}
    peaks = []
    for name, doc in (("latency_short", SHORT_DOC), ("latency_long", LONG_DOC)):
        runs = [_llama_embedding(binary, [doc], threads, folder) for _ in range(LATENCY_RUNS)]
        out[name] = [s for s, _ in runs]
        peaks += [p for _, p in runs]
    for name, docs in batches().items():
        runs = [_llama_embedding(binary, docs, threads, folder) for _ in range(repetitions)]
        out[f"batch_{name}"] = [len(docs) / s for s, _ in runs]
        peaks += [p for _, p in runs]
    out["peak_rss"] = max(peaks)
    out["idle_rss_single_doc"] = statistics.median(peaks[:LATENCY_RUNS])  # one short text: load + one decode
    return out
