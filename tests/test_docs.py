"""The docs run as written: every ```python block of a page in docs/, in
order, in one fresh process from the repository's root. Blocks fenced ```python notest are
illustrations that cannot run here (a GPU, a running server, another library); each page says
why next to them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python( notest)?\n(.*?)^```", re.DOTALL | re.MULTILINE)
PAGES = sorted(p.name for p in DOCS.glob("*.md"))


def blocks(page: Path, *, runnable: bool = True) -> list[str]:
    return [code for notest, code in FENCE.findall(page.read_text()) if bool(notest) != runnable]


def test_every_python_block_is_run_or_marked() -> None:
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        fences = re.findall(r"^```(py\w*.*)$", page.read_text(), re.MULTILINE)
        assert set(fences) <= {"python", "python notest"}, (page.name, fences)


def test_the_api_page_has_examples() -> None:
    assert len(blocks(DOCS / "api.md")) >= 10


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(DOCS / p)])
def test_examples_run(page: str, smollm2_path: Path, tmp_path: Path) -> None:
    script = "\n\n".join(f"# ---- block {i}\n{b}" for i, b in enumerate(blocks(DOCS / page)))
    (tmp_path / "examples.py").write_text(script)
    # from the repository's root, as a reader would run them (the LoRA example uses tests/synthetic.py)
    run = subprocess.run([sys.executable, str(tmp_path / "examples.py")], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-4000:]
