#!/usr/bin/env bash
# Build native llama.cpp tools from the same pinned tree as wasm/llama.wasm and native_fallback/
# (scripts/llama_cpp_source.sh): the parity oracle and the llama-bench baseline for benchmark
# ratios. CPU, GGML_NATIVE=ON, Release. Prints the bin directory on stdout.
#
# Idempotent: when the binaries exist and were built from the same tree and options, it only
# prints the bin directory.
#
# Usage: scripts/build_native_reference.sh
#        WASILLAMA_BUILD_JOBS=N   parallel compile jobs (default: nproc)
#        WASILLAMA_CUDA=1         also build the CUDA backend (into .cache/native-ref/build-cuda)
#        WASILLAMA_BUILD_CACHE    cache folder (default: <repo>/.cache)
#        WASILLAMA_AMX=1          keep the AMX that -march=native turns on where the CPU lists it
#                                 (default off: ggml's AMX matmul dies with SIGILL on some VMs that
#                                 grant AMX, upstream llama-bench included; docs/native.md)
#
# Targets: llama-bench, llama-batched-bench, llama-completion (this version's classic CLI; llama-cli needs the server
# build), llama-simple, llama-tokenize.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${WASILLAMA_BUILD_CACHE:-$root/.cache}"
jobs="${WASILLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 4)}"
cuda="${WASILLAMA_CUDA:-0}"
case "$cuda" in 1|ON|on|yes|true) cuda=ON; build="$cache/native-ref/build-cuda" ;;
                 *) cuda=OFF; build="$cache/native-ref/build" ;; esac
targets=(llama-bench llama-batched-bench llama-completion llama-simple llama-tokenize llama-quantize)

log() { printf '[build_native_reference] %s\n' "$*" >&2; }

src="$("$root/scripts/llama_cpp_source.sh")"
commit="$(cat "$root/wasm/LLAMA_CPP_COMMIT" 2>/dev/null || echo unknown)"
bin="$build/bin"
stamp="$build/.wasillama-stamp"
amx="${WASILLAMA_AMX:-0}"
no_amx=()
if [ "$amx" != 1 ] && [ "$(uname -m)" = x86_64 ]; then
    # GCC and clang let an explicit -mno-* win over what -march=native implies, in any order.
    no_amx=(-DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
            -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
fi
want="src=$src commit=$commit native=ON amx=$amx cuda=$cuda targets=${targets[*]}"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    ok=1
    for t in "${targets[@]}"; do [ -x "$bin/$t" ] || ok=0; done
    if [ "$ok" = 1 ]; then
        echo "$bin"
        exit 0
    fi
fi

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ -f "$build/CMakeCache.txt" ] && ! grep -q "^CMAKE_HOME_DIRECTORY:INTERNAL=$src\$" "$build/CMakeCache.txt"; then
    log "removing a build folder configured for another source tree"
    rm -rf "$build"
fi
mkdir -p "$build"
rm -f "$stamp"

cuda_args=(-DGGML_CUDA="$cuda")
if [ "$cuda" = ON ] && [ -n "${WASILLAMA_CUDA_ARCHITECTURES:-${CUDAARCHS:-}}" ]; then
    cuda_args+=(-DCMAKE_CUDA_ARCHITECTURES="${WASILLAMA_CUDA_ARCHITECTURES:-${CUDAARCHS:-}}")
fi

log "configuring llama.cpp ($src, cuda=$cuda) in $build"
cmake -S "$src" -B "$build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="$commit" \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_BACKEND_DL=OFF -DGGML_CCACHE=OFF \
    "${cuda_args[@]}" "${no_amx[@]}" \
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >"$build/cmake.log" 2>&1 || {
    tail -40 "$build/cmake.log" >&2; log "cmake configure failed (see $build/cmake.log)"; exit 1; }

log "building ${targets[*]} ($jobs jobs; log: $build/build.log)"
start=$(date +%s)
cmake --build "$build" --target "${targets[@]}" -j "$jobs" >"$build/build.log" 2>&1 || {
    tail -40 "$build/build.log" >&2; log "build failed (see $build/build.log)"; exit 1; }
log "built in $(( $(date +%s) - start ))s"

for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || { log "missing $bin/$t after the build"; exit 1; }
done
echo "$want" > "$stamp"
echo "$bin"
