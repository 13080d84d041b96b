#!/usr/bin/env bash
# wasillama's pp/tg next to native llama-bench, built from the same pinned llama.cpp and run in
# the same invocation on the same machine, reported as ratios (wasillama / llama-bench).
#
# Usage: benchmarks/vs_native.sh [MODEL.gguf] [extra `wasillama bench` options]
# Default model: SmolLM2-135M-Instruct Q4_1. llama-bench runs with 1 thread (the wasm guest is
# single-threaded); pass --llama-bench-threads N to compare against more.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$(bash "$root/scripts/build_native_reference.sh")"
model="${1:-$(python3 -c 'from wasillama.default_model import default_model_path; print(default_model_path())')}"
shift || true
exec wasillama bench -m "$model" -p 512 -n 128 -r 5 --llama-bench "$bin/llama-bench" "$@"
