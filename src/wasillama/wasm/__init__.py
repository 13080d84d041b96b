"""The wasm backend: llama.cpp compiled to wasm32-wasi, run by wasmtime in a sandbox."""

from .backend import WasmBackend

__all__ = ["WasmBackend"]
