#!/usr/bin/env bash
# GPU acceptance benchmark for the native backend: a synthetic Llama-3.2-1B-shaped model (random
# weights from a fixed seed, Llama 3's real vocabulary), quantized to Q4_K_M with llama.cpp's own
# llama-quantize, then `wasillama bench --backend native --gpu-layers -1` next to llama-bench
# (both built from the same pinned source, both with CUDA) in one invocation: pp512 and tg128.
#
# Usage (on a machine with an NVIDIA GPU and nvcc):
#   WASILLAMA_CUDA=1 pip install ./native_fallback
#   benchmarks/gpu_vs_llama_bench.sh            # writes .cache/bench/llama-3.2-1b-synthetic-*.gguf
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/.cache/bench"
mkdir -p "$out"
bin="$(WASILLAMA_CUDA=1 bash "$root/scripts/build_native_reference.sh")"
f16="$out/llama-3.2-1b-synthetic-f16.gguf"
q4="$out/llama-3.2-1b-synthetic-q4_k_m.gguf"
if [ ! -f "$q4" ]; then
    if [ ! -f "$f16" ]; then
        # Llama-3.2-1B: 16 layers, n_embd 2048, n_ff 8192, 32 heads, 8 KV heads, 128256-token vocab.
        PYTHONPATH="$root/tests" python3 -c "
import synthetic
vocab = synthetic.pinned_llama_cpp_dir() / 'models' / 'ggml-vocab-llama-bpe.gguf'
synthetic.write_llama('$f16', vocab=vocab, seed=1, n_layer=16, n_embd=2048, n_head=32, n_head_kv=8,
                      n_ff=8192, n_ctx_train=8192, qtype='f16', name='llama-3.2-1b-synthetic')"
    fi
    "$bin/llama-quantize" "$f16" "$q4" Q4_K_M >/dev/null
fi
exec wasillama bench -m "$q4" --backend native --trust-model --gpu-layers -1 -p 512 -n 128 -r 5 \
    -t "$(nproc)" --llama-bench "$bin/llama-bench" --llama-bench-threads "$(nproc)" "$@"
