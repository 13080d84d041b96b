"""What `import wasillama` costs: no wasmtime until a wasm model is loaded, no native library
until a native model is."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_wasillama_does_not_import_wasmtime(synthetic_model: Path) -> None:
    out = _run(f"""
        import sys
        import wasillama
        from wasillama.backend import load_plugin
        load_plugin("wasm").capabilities  # choosing a backend needs no machinery either
        before = "wasmtime" in sys.modules
        with wasillama.Model.load({str(synthetic_model)!r}):
            pass
        print(before, "wasmtime" in sys.modules)
    """)
    assert out == "False True"


def test_backends_are_found_by_name_alike() -> None:
    out = _run("""
        from wasillama.backend import installed_plugins
        print(sorted(installed_plugins()))
    """)
    assert "'wasm'" in out


def test_no_network_and_no_hub_client_unless_a_hub_model_is_asked_for(synthetic_model: Path) -> None:
    out = _run(f"""
        import socket, sys

        def refuse(*args, **kwargs):
            raise AssertionError("a network connection was attempted")

        socket.socket.connect = socket.socket.connect_ex = refuse  # any connection fails the test
        socket.create_connection = refuse
        import wasillama, wasillama.cli, wasillama.server
        with wasillama.Model.load({str(synthetic_model)!r}, progress=True) as m, m.new_context(n_ctx=64) as c:
            c.generate("Hi", max_tokens=2)
        print(sorted(m for m in ("huggingface_hub", "tqdm", "httpx", "requests") if m in sys.modules))
    """)
    assert out == "[]"
