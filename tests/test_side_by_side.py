"""benchmarks/: the synthetic benchmark models and the side-by-side report, on a tiny model of the
benchmark's shape family (the real run, `wasillama bench --side-by-side`, takes most of an hour).
Nothing here is timed: the measured values are only carried into the tables as they came."""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import synthetic
import wasillama
from wasillama.bench import run_bench
from wasillama.model import kv_cache_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import report
import side_by_side
import synthetic_models

pytest.importorskip("gguf")

# Llama-3.2-1B's settings (rope theta, tied embeddings, context) at toy sizes, with the 32k vocab:
# reading Llama 3's 128k-token one takes the gguf package seconds.
TINY = {**synthetic_models.LLAMA_3_2_1B, "n_embd": 64, "n_head": 4, "n_head_kv": 1, "n_ff": 128}
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> synthetic_models.SyntheticModel:
    (m,) = synthetic_models.bench_models(["F16"], n_layer=1, folder=tmp_path_factory.mktemp("bench-models"),
                                         shape=TINY, vocab_name=synthetic.DEFAULT_VOCAB)
    return m


def test_generator_writes_the_shape_asked_for_and_records_its_sha256(tiny: synthetic_models.SyntheticModel) -> None:
    assert tiny.sha256 == hashlib.sha256(tiny.path.read_bytes()).hexdigest()
    manifest = json.loads((tiny.path.parent / "manifest.json").read_text())
    assert manifest[tiny.path.name]["sha256"] == tiny.sha256
    mtime = tiny.path.stat().st_mtime_ns
    (again,) = synthetic_models.bench_models(["F16"], n_layer=1, folder=tiny.path.parent, shape=TINY,
                                             vocab_name=synthetic.DEFAULT_VOCAB)
    assert again == tiny and tiny.path.stat().st_mtime_ns == mtime  # present: kept, not rewritten
    with wasillama.Model.load(tiny.path) as model:
        i = model.info
        assert (i.n_embd, i.n_head, i.n_head_kv, i.n_layer, i.n_ctx_train, i.n_vocab) == (64, 4, 1, 1, 131072, 32000)
        assert float(model.metadata["llama.rope.freq_base"]) == 500000.0
        assert float(model.metadata["llama.attention.layer_norm_rms_epsilon"]) == pytest.approx(1e-5)
    names = [t[0] for t in synthetic.gguf_layout(tiny.path.read_bytes()).tensors]
    assert "token_embd.weight" in names and "output.weight" not in names  # tied, as in Llama 3.2 1B


def test_report_carries_measured_samples_and_a_dead_comparator(tiny: synthetic_models.SyntheticModel,
                                                               tmp_path: Path) -> None:
    def engines_for(model: side_by_side.BenchModel, stack: list[Any]) -> dict[str, side_by_side.Runner]:
        loaded = wasillama.Model.load(model.path)
        stack.append(loaded)

        def sigill(m: side_by_side.BenchModel, t: int) -> list[Any]:
            raise subprocess.CalledProcessError(-4, ["llama-bench"])

        return {"native": sigill,
                "wasm": lambda m, t: run_bench(loaded, n_prompt=16, n_gen=4, repetitions=1, n_threads=t)}

    bm = side_by_side.BenchModel("tiny", "F16", tiny.path, tiny.sha256, tiny.size_bytes)
    errors: list[str] = []
    rows = side_by_side.measure_speed([bm], [1], 3, engines_for, errors)
    assert [(r["test"], r["threads"], sorted(r["samples"])) for r in rows] == [("pp16", 1, ["wasm"]),
                                                                               ("tg4", 1, ["wasm"])]
    assert all(len(r["samples"]["wasm"]) == 3 and min(r["samples"]["wasm"]) > 0 for r in rows)
    assert len(errors) == 1 and "native" in errors[0]  # tried once, then left out

    probe = side_by_side._child(tiny.path, "wasm", None, 64, 16)  # a fresh process
    with wasillama.Model.load(tiny.path) as model:
        assert probe["kv_bytes"] == kv_cache_bytes(model.info, 64) == 64 * 1 * 1 * 16 * 2 * 2  # K and V, f16
    assert probe["mem_peak"]["hwm"] >= probe["mem_idle"]["rss"] > probe["mem_import"]["rss"]

    results = {"settings": {"repetitions": 3, "n_prompt": 16, "n_gen": 4, "threads": [1], "note": "", "partial": True},
               "models": [{"model": "tiny", "type": "F16", "path": str(tiny.path), "sha256": tiny.sha256,
                           "size_bytes": tiny.size_bytes}],
               "speed": rows, "startup": [{"model": "tiny", "type": "F16", "wasm_warm": probe}], "errors": errors,
               "machine": side_by_side.machine("not installed", {}, time.time())}
    report.write_doc(results, tmp_path)
    md = (tmp_path / "benchmarks.md").read_text()
    pp = rows[0]["samples"]["wasm"]
    spread = f"{report.fmt(statistics.median(pp))} ({report.fmt(min(pp))}\u2013{report.fmt(max(pp))})"
    assert f"| tiny | F16 | pp16 | 1 | {spread} | - | - | - | - | - |" in md
    assert "**A short run**" in md and "wasillama bench --side-by-side" in md
    assert f"| tiny | F16 | {report.fmt(probe['size_bytes'] / 2**20)} | " in md
    assert json.loads((tmp_path / "benchmarks.json").read_text())["speed"] == rows
    bars = [e for e in ET.parse(tmp_path / "benchmarks.svg").getroot().iter(f"{SVG}rect") if e.find(f"{SVG}title")
            is not None]
    assert sorted(str(b.findtext(f"{SVG}title")) for b in bars) == sorted(
        f"wasm: {report.fmt(statistics.median(r['samples']['wasm']))} t/s" for r in rows)
