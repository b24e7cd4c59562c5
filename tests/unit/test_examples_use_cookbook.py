"""The examples run the tinker-cookbook's own training loops, and
no cookbook file is copied here."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOOPS = {
    "sl_conversations.py": "tinker_cookbook.supervised",
    "rl_arithmetic.py": "tinker_cookbook.rl",
    "dpo_preferences.py": "tinker_cookbook.preference",
}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("script", sorted(LOOPS))
def test_each_example_imports_the_cookbook_loop(script: str) -> None:
    modules = imported_modules(ROOT / "examples" / script)
    assert any(m.startswith(LOOPS[script]) for m in modules), sorted(modules)


def test_no_cookbook_file_is_copied_into_the_project() -> None:
    cookbook = pytest.importorskip("tinker_cookbook")
    package = Path(cookbook.__file__).parent

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    theirs = {digest(p) for p in package.rglob("*") if p.is_file() and p.stat().st_size > 200}
    ours = [
        p
        for d in ("tinsmith", "examples", "benchmarks", "tests")
        for p in (ROOT / d).rglob("*")
        if p.is_file()
    ]
    copied = [
        str(p.relative_to(ROOT)) for p in ours if p.stat().st_size > 200 and digest(p) in theirs
    ]
    assert not copied, copied
