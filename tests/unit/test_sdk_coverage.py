"""README's "Every SDK method and CLI command" table against the installed SDK: every public
method of its four clients and every `tinker` CLI command has a row (so a new SDK release shows
what it added), and every row marked supported names a test file that calls it."""

from __future__ import annotations

import inspect
import re

import click
import tinker
from tinker.cli.__main__ import main_cli

from tests.conftest import ROOT

CLIENTS = (tinker.ServiceClient, tinker.TrainingClient, tinker.SamplingClient, tinker.RestClient)
STATUSES = {"supported", "client-side", "refused", "not yet"}


def _table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Every SDK method and CLI command", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([^`]+)` \| ([a-z -]+) \| (.+) \|$", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


def _methods() -> list[str]:
    names = []
    for cls in CLIENTS:
        public = {n for n, v in inspect.getmembers(cls) if not n.startswith("_") and callable(v)}
        # an *_async twin of a listed method behaves as it does
        names += [
            f"{cls.__name__}.{n}"
            for n in sorted(public)
            if not (n.endswith("_async") and n.removesuffix("_async") in public)
        ]
    return names


def _commands() -> list[str]:
    ctx = click.Context(main_cli)
    found: list[str] = []

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])
            elif command is not None:
                found.append(" ".join([*prefix, name]))

    walk(main_cli, ["tinker"])
    return found


def test_every_public_method_and_cli_command_has_a_row() -> None:
    rows = _table()
    wanted = _methods() + _commands()
    assert len(wanted) > 60  # the introspection found the SDK's surface
    missing = [name for name in wanted if name not in rows]
    assert not missing, f"add these to README's SDK table: {missing}"
    stale = sorted(set(rows) - set(wanted))
    assert not stale, f"README's SDK table names what the SDK no longer has: {stale}"
    bad = {name: status for name, (status, _) in rows.items() if status not in STATUSES}
    assert not bad, bad


def test_every_supported_row_names_a_test_that_calls_it() -> None:
    for name, (status, shown_by) in _table().items():
        if status != "supported":
            continue
        files = re.findall(r"`(tests/[^`]+\.py)`", shown_by)
        assert files, f"{name}: a supported row names its test file"
        if name.startswith("tinker "):
            words = name.split()[1:]
            call = re.compile(r",\s*".join(f'"{w}"' for w in words))
        else:
            call = re.compile(rf"\.{name.split('.')[1]}\(")
        for file in files:
            path = ROOT / file
            assert path.is_file(), f"{name}: {file} does not exist"
            assert call.search(path.read_text()), f"{name}: {file} does not call it"
