"""The README's Python code runs: every ```python block is executed in order, in one namespace, with the
embedded model swapped for a tiny random one (so the test takes seconds and needs no weights)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_has_code_and_stays_short():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert len(python_blocks(text)) >= 2


def test_readme_python_blocks_run_on_the_tiny_model(tmp_path, monkeypatch):
    import circuits
    from tiny import tiny_long_model

    tiny = tiny_long_model()  # a long context: the built-in recipes' chats run past 64 tokens
    monkeypatch.setenv("COALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(circuits, "load_model", lambda *a, **k: tiny)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(python_blocks(README.read_text())):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block, so a rotten example is found at once
            pytest.fail(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{block}")
