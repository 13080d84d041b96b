#!/usr/bin/env bash
# Build native llama.cpp tools from the same pinned tree as wasm/llama.wasm and native_fallback/
# (scripts/llama_cpp_source.sh): the parity oracle and the llama-bench baseline for benchmark
# ratios. CPU, Release. Prints the bin directory on stdout.
#
# Two CPU builds, each in its own folder:
#   native (default)  GGML_NATIVE=ON: -march=native, what this machine can do  -> .cache/native-ref/build
#   avx2              GGML_NATIVE=OFF with SSE4.2/AVX/AVX2/BMI2/FMA/F16C, no AVX-512, no AMX: a
#                     distro's x86-64-v3 build or a typical laptop's          -> .cache/native-ref/build-avx2
#   server            the native build's CPU options, llama-server alone (the server load test's
#                     comparator)                                             -> .cache/native-ref/build-server
#
# Idempotent: when the binaries exist and were built from the same tree and options, it only
# prints the bin directory.
#
# Usage: scripts/build_native_reference.sh
#        WASILLAMA_REF_CPU=avx2   the portable AVX2 build (llama-bench and llama-embedding only)
#        WASILLAMA_REF_CPU=server llama-server, CPU options as the native build
#        WASILLAMA_BUILD_JOBS=N   parallel compile jobs (default: nproc)
#        WASILLAMA_CUDA=1         also build the CUDA backend (into .cache/native-ref/build-cuda)
#        WASILLAMA_BUILD_CACHE    cache folder (default: <repo>/.cache)
#        WASILLAMA_AMX=1          keep the AMX that -march=native turns on where the CPU lists it
#                                 (default off: ggml's AMX matmul dies with SIGILL on some VMs that
#                                 grant AMX, upstream llama-bench included; docs/native.md)
#
# Targets (native build): llama-bench, llama-batched-bench, llama-completion (this version's
# classic CLI; llama-cli needs the server build), llama-simple, llama-tokenize, llama-quantize,
# llama-embedding.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${WASILLAMA_BUILD_CACHE:-$root/.cache}"
jobs="${WASILLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 4)}"
cpu="${WASILLAMA_REF_CPU:-native}"
cuda="${WASILLAMA_CUDA:-0}"
case "$cuda" in 1|ON|on|yes|true) cuda=ON ;; *) cuda=OFF ;; esac
amx="${WASILLAMA_AMX:-0}"

log() { printf '[build_native_reference] %s\n' "$*" >&2; }

cpu_args=()
server=OFF
case "$cpu" in
    native|server)
        targets=(llama-bench llama-batched-bench llama-completion llama-simple llama-tokenize llama-quantize
                 llama-embedding)
        build="$cache/native-ref/build"
        [ "$cuda" = ON ] && build="$cache/native-ref/build-cuda"
        if [ "$cpu" = server ]; then
            [ "$cuda" = OFF ] || { log "WASILLAMA_REF_CPU=server is a CPU-only build"; exit 1; }
            targets=(llama-server)
            build="$cache/native-ref/build-server"
            server=ON
        fi
        cpu_args=(-DGGML_NATIVE=ON)
        if [ "$amx" != 1 ] && [ "$(uname -m)" = x86_64 ]; then
            # GCC and clang let an explicit -mno-* win over what -march=native implies, in any order.
            cpu_args+=(-DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
                       -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
        fi
        want_cpu="native=ON amx=$amx" ;;
    avx2)
        [ "$(uname -m)" = x86_64 ] || { log "WASILLAMA_REF_CPU=avx2 is an x86-64 build"; exit 1; }
        [ "$cuda" = OFF ] || { log "WASILLAMA_REF_CPU=avx2 is a CPU-only build"; exit 1; }
        targets=(llama-bench llama-embedding)
        build="$cache/native-ref/build-avx2"
        for f in SSE42 AVX AVX2 BMI2 FMA F16C; do cpu_args+=(-DGGML_"$f"=ON); done
        for f in AVX_VNNI AVX512 AVX512_VBMI AVX512_VNNI AVX512_BF16 AMX_TILE AMX_INT8 AMX_BF16; do
            cpu_args+=(-DGGML_"$f"=OFF)
        done
        cpu_args=(-DGGML_NATIVE=OFF "${cpu_args[@]}")
        want_cpu="${cpu_args[*]}" ;;
    *) log "WASILLAMA_REF_CPU must be native, avx2 or server, not '$cpu'"; exit 1 ;;
esac

src="$("$root/scripts/llama_cpp_source.sh")"
commit="$(cat "$root/wasm/LLAMA_CPP_COMMIT" 2>/dev/null || echo unknown)"
bin="$build/bin"
stamp="$build/.wasillama-stamp"
want="src=$src commit=$commit $want_cpu cuda=$cuda targets=${targets[*]}"

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

log "configuring llama.cpp ($src, cpu=$cpu, cuda=$cuda) in $build"
cmake -S "$src" -B "$build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="$commit" \
    -DBUILD_SHARED_LIBS=OFF -DGGML_BACKEND_DL=OFF -DGGML_CCACHE=OFF \
    "${cpu_args[@]}" "${cuda_args[@]}" \
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER="$server" -DLLAMA_BUILD_APP=OFF \
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
