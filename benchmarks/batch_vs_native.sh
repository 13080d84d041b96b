#!/usr/bin/env bash
# generate_batch (8 prompts x 128 tokens) against 8 sequential generate calls on the wasm backend,
# next to llama-batched-bench (1 vs 8 parallel sequences, 128 generated tokens, 1 thread) built
# from the same pinned llama.cpp, in one invocation.
#
# Usage: benchmarks/batch_vs_native.sh [MODEL.gguf]    (default: SmolLM2-135M-Instruct Q4_1)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$(bash "$root/scripts/build_native_reference.sh")"
model="${1:-$(python3 -c 'from wasillama.default_model import default_model_path; print(default_model_path())')}"
python3 "$root/benchmarks/batch.py" --backend wasm -m "$model" -n 128 --prompts 8
echo "== llama-batched-bench (native, 1 thread): S_TG = generation t/s over all sequences"
"$bin/llama-batched-bench" -m "$model" -c 4096 -b 512 -ub 512 -npp 32 -ntg 128 -npl 1,8 -t 1 2>/dev/null \
    | grep -E "^\|"
