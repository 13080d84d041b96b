"""The wheel as it ships: `python -m build` makes one py3-none-any wheel with llama.wasm, the
embedding model, py.typed, licences and metadata; installed into a fresh venv (from PyPI, no
source tree on the path) it generates what the library in this checkout generates."""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import wasillama

REPO = Path(__file__).resolve().parents[1]
PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)], check=True,
                   capture_output=True, timeout=600)
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_one_pure_wheel_with_the_module_the_model_and_the_licences(wheel: Path) -> None:
    assert wheel.name == f"wasillama-{wasillama.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert z.read("wasillama/llama.wasm") == (REPO / "wasm" / "llama.wasm").read_bytes()
        assert {"wasillama/py.typed", "wasillama/models/all-MiniLM-L6-v2-q8_0.gguf", "wasillama/models/NOTICE.md",
                "wasillama/hub.py", "wasillama/server/app.py"} <= names
        info = f"wasillama-{wasillama.__version__}.dist-info"
        assert {f"{info}/licenses/LICENSE", f"{info}/licenses/LICENSES/llama.cpp.txt",
                f"{info}/licenses/LICENSES/NOTICE.md"} <= names
        assert "ggml authors" in z.read(f"{info}/licenses/LICENSES/llama.cpp.txt").decode()
        meta = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
        wheel_tags = z.read(f"{info}/WHEEL").decode()
    assert not [n for n in names if n.endswith((".so", ".pyd", ".dylib"))]  # nothing native
    assert "Tag: py3-none-any" in wheel_tags
    assert meta["License-Expression"] == "MIT AND Apache-2.0 WITH LLVM-exception AND Apache-2.0"
    assert set(meta.get_all("License-File") or []) == {"LICENSE", "LICENSES/NOTICE.md", "LICENSES/llama.cpp.txt"}
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    assert any(u.startswith("Source, ") for u in meta.get_all("Project-URL", []))
    requires = " ".join(meta.get_all("Requires-Dist", []))
    for dep in ("wasmtime", "numpy", "click", "huggingface-hub", "tqdm"):
        assert dep in requires
    assert meta["Requires-Python"] == ">=3.10"


def test_the_wheel_installs_into_a_fresh_venv_and_generates(wheel: Path, smollm2_path: Path,
                                                            tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              str(wheel)], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = ("import wasillama, sys; from wasillama import Model\n"
             "print(wasillama.__file__)\n"
             f"with Model.load({str(smollm2_path)!r}) as m, m.new_context(n_ctx=512) as c:\n"
             f"    print(repr(c.generate({PROMPT!r}, max_tokens=16, temperature=0).text))\n"
             "print(len(wasillama.embed(['hello'])[0]))\n")
    run = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    where, text, dims = run.stdout.splitlines()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO)  # the installed copy
    with wasillama.Model.load(smollm2_path) as m, m.new_context(n_ctx=512) as c:
        assert eval(text) == c.generate(PROMPT, max_tokens=16, temperature=0).text
    assert dims == "384"  # the embedder and its model came with the wheel
    cli = subprocess.run([str(venv / "bin" / "wasillama"), "run", "-m", str(smollm2_path), "-p", PROMPT, "-n", "16",
                          "--temp", "0", "-q"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stdout.strip()
