"""Every example in docs/ runs: each ```python block in-process, each ```sh block in bash.

The blocks of a page run in order, in one fresh folder, as a reader would run them;
``text`` blocks are shown output and are not run. Budgets in the examples are tiny.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
RUNNABLE = ("python", "sh")
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
PAGES = ["wrap-a-loop.md", "lightning.md", "train-an-enn.md", "sweep.md", "dashboard.md"]


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of each fenced block of ``page``, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(page.read_text())]


def test_every_page_has_a_runnable_example_and_is_tested():
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "method.md")
    assert pages == sorted(PAGES)
    for name in PAGES:
        langs = [lang for lang, _ in blocks(DOCS / name)]
        assert any(lang in RUNNABLE for lang in langs), f"{name} has no runnable example"
        assert all(lang in (*RUNNABLE, "text") for lang in langs), f"{name}: {langs}"


def test_the_block_parser_finds_the_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("intro\n```python\nx = 1\n```\nmiddle\n```text\nout\n```\n")
    assert blocks(page) == [("python", "x = 1\n"), ("text", "out\n")]


@pytest.mark.parametrize("name", PAGES)
def test_the_examples_of_the_page_run(name, tmp_path, monkeypatch, record_wall_time):
    if name == "lightning.md":
        pytest.importorskip("lightning", reason="the [lightning] extra is not installed")
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    for i, (lang, code) in enumerate(blocks(DOCS / name)):
        if lang == "python":
            namespace = {"__name__": f"docs_{name}_{i}"}
            exec(compile(code, f"{DOCS / name}[block {i}]", "exec"), namespace)
        elif lang == "sh":
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path,
                                    env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, (
                f"{name} block {i} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                f"{result.stderr[-3000:]}")
    record_wall_time(f"docs_{name}", time.perf_counter() - start)
