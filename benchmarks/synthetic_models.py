"""Synthetic Llama GGUFs for the benchmarks: random weights from a fixed seed, real shapes and a real
vocabulary (tests/synthetic.write_llama), quantized by the pinned llama.cpp's llama-quantize.

    python benchmarks/synthetic_models.py [--types Q4_0 Q8_0 Q4_K_M F16] [--layers 4]

writes the Llama-3.2-1B-shaped models (n_embd 2048, 32 heads, 8 KV heads, n_ff 8192, rope theta
500000, tied embeddings, Llama 3's 128256-token BPE vocabulary; 4 blocks of its 16) into
~/.cache/wasillama/bench-models once, records their sha256 in manifest.json there, and prints them.
Also the generator of benchmarks/parity_report.py's models (`quantized_family`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import synthetic  # noqa: E402

BENCH_TYPES = ("Q4_0", "Q8_0", "Q4_K_M", "F16")
BENCH_LAYERS = 4
LLAMA3_VOCAB = "ggml-vocab-llama-bpe.gguf"  # Llama 3's tokenizer (tiktoken-style BPE), vocab-only
# Llama-3.2-1B's hyperparameters (its config.json); rms eps 1e-5 is write_llama's. Not modelled: the
# llama3 rope scaling factors (a 32-float rope_freqs tensor, no measurable cost).
LLAMA_3_2_1B: dict[str, Any] = {"n_embd": 2048, "n_head": 32, "n_head_kv": 8, "n_ff": 8192,
                                "rope_freq_base": 500000.0, "n_ctx_train": 131072, "tie_embeddings": True}
SEED = 1


def native_bin(cpu: str = "native") -> Path:
    """The bin folder of a reference llama.cpp build ("native" or "avx2"), built once and cached by
    scripts/build_native_reference.sh."""
    env = {**os.environ, "WASILLAMA_REF_CPU": cpu}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_native_reference.sh")], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/build_native_reference.sh ({cpu}) failed: {proc.stderr[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def quantize(src: Path, dst: Path, qtype: str) -> Path:
    """llama-quantize src -> dst (skipped when dst exists; written under another name first, so an
    interrupted run leaves no half file)."""
    if not dst.exists():
        partial = dst.with_name(dst.name + ".partial")
        subprocess.run([str(native_bin() / "llama-quantize"), str(src), str(partial), qtype], check=True,
                       capture_output=True)
        partial.replace(dst)
    return dst


def quantized_family(folder: Path, stem: str, types: list[str] | tuple[str, ...], *, base_type: str = "F32",
                     **write_args: Any) -> dict[str, Path]:
    """{type: path} of `stem`-TYPE.gguf in `folder`: one random-weight model written in base_type
    ("F32" or "F16") by synthetic.write_llama(**write_args), the other types quantized from it."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / f"{stem}-{base_type}.gguf"
    if not base.exists():
        synthetic.write_llama(base, qtype=base_type.lower(), **write_args)
    return {t: base if t == base_type else quantize(base, folder / f"{stem}-{t}.gguf", t) for t in types}


@dataclass(frozen=True)
class SyntheticModel:
    type: str
    path: Path
    sha256: str
    size_bytes: int
    n_layer: int


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _recorded(path: Path, manifest: dict[str, Any]) -> str:
    """path's sha256, hashed once: the manifest keeps it with the size and mtime it was taken at."""
    st = path.stat()
    entry = manifest.get(path.name, {})
    if entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
        entry = {"sha256": file_sha256(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        manifest[path.name] = entry
    return str(entry["sha256"])


def bench_folder() -> Path:
    from wasillama.paths import cache_dir

    return cache_dir() / "bench-models"


def bench_models(types: list[str] | tuple[str, ...] = BENCH_TYPES, *, n_layer: int = BENCH_LAYERS,
                 folder: Path | None = None, shape: dict[str, Any] | None = None,
                 vocab_name: str = LLAMA3_VOCAB) -> list[SyntheticModel]:
    """The Llama-3.2-1B-shaped models (or `shape` instead), made once; F16 is the written base.
    vocab_name: a vocab-only GGUF of the pinned tree's models/ (reading Llama 3's takes seconds)."""
    folder = folder or bench_folder()
    shape = LLAMA_3_2_1B if shape is None else shape
    vocab = synthetic.pinned_llama_cpp_dir() / "models" / vocab_name
    stem = f"llama3-{shape['n_embd']}x{n_layer}"
    paths = quantized_family(folder, stem, types, base_type="F16", vocab=vocab, seed=SEED, n_layer=n_layer,
                             name=f"synthetic Llama-3.2-1B-shaped, {n_layer} layers", **shape)
    manifest_path = folder / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    out = [SyntheticModel(t, p, _recorded(p, manifest), p.stat().st_size, n_layer) for t, p in paths.items()]
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=list(BENCH_TYPES))
    ap.add_argument("--layers", type=int, default=BENCH_LAYERS)
    args = ap.parse_args(argv)
    for m in bench_models(args.types, n_layer=args.layers):
        print(json.dumps({**asdict(m), "path": str(m.path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
