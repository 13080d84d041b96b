"""docs/api.md runs as written: its Python blocks, in order, in one fresh process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)


def test_the_api_page_has_examples() -> None:
    assert len(blocks(DOCS / "api.md")) >= 10


@pytest.mark.parametrize("page", ["api.md"])
def test_examples_run(page: str, smollm2_path: Path, tmp_path: Path) -> None:
    script = "\n\n".join(f"# ---- block {i}\n{b}" for i, b in enumerate(blocks(DOCS / page)))
    (tmp_path / "examples.py").write_text(script)
    # from the repository's root, as a reader would run them (the LoRA example uses tests/synthetic.py)
    run = subprocess.run([sys.executable, str(tmp_path / "examples.py")], capture_output=True, text=True,
                         timeout=600, cwd=DOCS.parent)
    assert run.returncode == 0, run.stderr[-4000:]
