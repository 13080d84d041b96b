#!/usr/bin/env bash
# What the native plugin's run-time CPU dispatch costs: `wasillama bench --backend native` with
# each CPU variant this machine can run (forced with WASILLAMA_CPU_VARIANT), each next to
# llama-bench built from the same pinned source with GGML_NATIVE=ON (AMX off, as the plugin), in
# the same invocation, reported as ratios. Optionally also a WASILLAMA_CPU=native build of the
# plugin (-march=native):
#
#   WASILLAMA_CPU=native cmake -S native_fallback -B /tmp/native-build -G Ninja
#   ninja -C /tmp/native-build wasillama_native
#   NATIVE_LIBRARY=/tmp/native-build/libwasillama_native.so benchmarks/native_cpu_variants.sh
#
# Usage: benchmarks/native_cpu_variants.sh [MODEL.gguf] [extra `wasillama bench` options]
# Default model: SmolLM2-135M-Instruct Q4_1; threads: all cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$(bash "$root/scripts/build_native_reference.sh")"
model="${1:-$(python3 -c 'from wasillama.default_model import default_model_path; print(default_model_path())')}"
shift || true
threads="$(nproc)"
variants="$(python3 - <<'PY'
import wasillama_native
print(" ".join(v for v in wasillama_native.build_info().get("cpu_variants", "").split(",") if v))
PY
)"
bench() {
    wasillama bench -m "$model" --backend native --trust-model -p 512 -n 128 -r 3 -t "$threads" \
        --llama-bench "$bin/llama-bench" --llama-bench-threads "$threads" "$@"
}
for v in $variants; do
    if ! WASILLAMA_CPU_VARIANT="$v" python3 -c 'from wasillama_native import plugin; plugin.create()' 2>/dev/null; then
        echo "== variant $v: this CPU cannot run it"
        continue
    fi
    echo "== variant $v"
    WASILLAMA_CPU_VARIANT="$v" bench "$@"
done
echo "== default choice: $(python3 -c 'from wasillama_native import plugin; print(plugin.create().cpu.variant)')"
if [ -n "${NATIVE_LIBRARY:-}" ]; then
    echo "== WASILLAMA_CPU=native build: $NATIVE_LIBRARY"
    WASILLAMA_NATIVE_LIBRARY="$NATIVE_LIBRARY" bench "$@"
fi
