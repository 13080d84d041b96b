#!/usr/bin/env bash
# generate_batch (8 prompts of 32 tokens, 128 generated each) against 8 sequential generate calls
# on the wasm backend, next to llama-batched-bench (1 and 8 parallel sequences, the same shape,
# 1 thread) built from the same pinned llama.cpp, then pp512 of both for reference: issue 13 asks
# that the wasm / native ratio of batched decoding be no worse than that of pp512.
#
# Usage: benchmarks/batch_vs_native.sh [MODEL.gguf]    (default: SmolLM2-135M-Instruct Q4_1)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$(bash "$root/scripts/build_native_reference.sh")"
model="${1:-$(python3 -c 'from wasillama.default_model import default_model_path; print(default_model_path())')}"
python3 "$root/benchmarks/batch.py" --backend wasm -m "$model" -n 128 --n-prompt 32 --prompts 8 -t 1 \
    --llama-batched-bench "$bin/llama-batched-bench"
echo "== pp512, 1 thread (wasillama bench next to llama-bench)"
wasillama bench -m "$model" -p 512 -n 0 -t 1 -r 3 --llama-bench "$bin/llama-bench" --quiet
