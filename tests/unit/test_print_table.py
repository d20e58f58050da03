"""`print_table` prints what it is given whole, at any terminal width or none (a pipe)."""

from __future__ import annotations

import pytest

from jaco.cli.common import print_table, table

KEY = "jaco/5f2b9c0e1d3a4b6c/2026/12/04/cluster-2026-12-04-12345678.tar.gz.age"


@pytest.mark.parametrize("columns", ["40", "80", "200"])
def test_cells_and_a_title_wider_than_the_table_are_whole(
    columns: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    print_table(table(("FIELD", "VALUE"), [("key", KEY), ("sha256", "ab" * 32)], KEY + " " * 3))
    print_table(table(("A",), [("x",)], "a title much longer than its one narrow column"))
    shown = capsys.readouterr().out
    lines = shown.splitlines()
    assert "…" not in shown, shown
    assert sum(KEY in line for line in lines) == 2, shown  # the title's line and the cell's
    assert any("ab" * 32 in line for line in lines), shown
    assert any("a title much longer than its one narrow column" in line for line in lines), shown
