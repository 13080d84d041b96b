#!/usr/bin/env bash
# Fetch the pinned llama.cpp source (vendored in the llama-cpp-python sdist), check its sha256,
# unpack it once into a cache, and print the path of the llama.cpp tree.
# Used by wasm/build.sh, native_fallback/ and scripts/build_native_reference.sh so that every
# build of the shim compiles against exactly the same llama.cpp.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${WASILLAMA_BUILD_CACHE:-$root/.cache}"
sdist="$cache/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
tree="$cache/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
mkdir -p "$cache"

# Builds may run side by side (wasm, native, reference): one fetches and unpacks, the others wait.
exec 9>"$cache/.llama_cpp_source.lock"
flock 9

if [ ! -f "$tree/.unpacked" ]; then
    if [ ! -f "$sdist" ] || ! echo "$SDIST_SHA256  $sdist" | sha256sum -c --status; then
        rm -f "$sdist"
        python3 -m pip download --quiet --no-deps --no-binary :all: \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$cache" >&2 || true
        [ -f "$sdist" ] || { echo "error: could not download llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist" >&2; exit 1; }
    fi
    echo "$SDIST_SHA256  $sdist" | sha256sum -c --status || {
        echo "error: sha256 mismatch for $sdist" >&2; exit 1; }
    rm -rf "$tree" "$cache/.unpack"
    mkdir "$cache/.unpack"
    tar xzf "$sdist" -C "$cache/.unpack"
    mv "$cache/.unpack/$(basename "$tree")" "$tree"
    rmdir "$cache/.unpack"
    touch "$tree/.unpacked"
fi
echo "$tree/vendor/llama.cpp"
