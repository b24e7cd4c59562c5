"""The tests' fake coordinator cannot drift from ``CoordinatorAPI``: mypy checks it.

A copy of ``tests/fakes.py``'s ``FakeCoordinator`` without one of the interface's methods, used
as a ``CoordinatorAPI``, must fail mypy naming that method (one copy per method, in one run); and
``tests/fakes.py`` itself must pass. mypy reuses the repository's cache, so this takes seconds
once ``make lint`` (or any mypy run) has filled it.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from mypy import api

from tinsmith.types.coordinator import CoordinatorAPI

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "fakes.py"
METHODS = sorted(
    name for name, value in vars(CoordinatorAPI).items() if inspect.iscoroutinefunction(value)
)


def _without(source: str, method: str) -> str:
    """``FakeCoordinator``'s source, renamed ``Without_<method>``, less ``method``."""
    lines = source.splitlines()
    tree = ast.parse(source)
    (fake,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FakeCoordinator"]
    assert fake.end_lineno is not None
    (drop,) = [n for n in fake.body if isinstance(n, ast.AsyncFunctionDef) and n.name == method]
    assert drop.end_lineno is not None
    keep = lines[fake.lineno - 1 : drop.lineno - 1] + lines[drop.end_lineno : fake.end_lineno]
    keep[0] = keep[0].replace("class FakeCoordinator", f"class Without_{method}")
    conforms = [
        f"def _conforms_{method}(fake: Without_{method}) -> CoordinatorAPI:",
        "    return fake",
    ]
    return "\n".join([*keep, "", "", *conforms])


def test_mypy_names_a_method_the_fake_lacks_and_passes_the_real_fake(tmp_path: Path) -> None:
    assert {"forward_backward", "refuse", "sample"} <= set(METHODS)
    source = FAKES.read_text()
    broken = tmp_path / "broken_fakes.py"
    broken.write_text(
        "\n\n".join([source, *(_without(source, m) for m in METHODS)]) + "\n",
    )
    out, err, status = api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            "--show-absolute-path",
            str(broken),
            str(FAKES),
        ]
    )
    assert status == 1, out + err
    assert str(FAKES) not in out, out
    for method in METHODS:
        missing = re.search(
            rf'"Without_{method}" is missing following "CoordinatorAPI" protocol member:\n'
            rf".*note:\s+{method}\n",
            out,
        )
        assert missing, f"mypy did not name {method!r}:\n{out}"
