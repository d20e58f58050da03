"""jaco.cli.common.safe: what rich would do with hostile text, and what it does once escaped."""

from __future__ import annotations

import io
import re

from rich.console import Console

from jaco.cli.common import safe, table

HOSTILE = (
    "[bold red blink]x[/] [link=https://evil.example]y[/link] \x1b[2J\x1b]8;;u\x07z\rw\nv"
    "\u202eevil\u2066"
)

BLINK = re.compile(r"\x1b\[(?:[0-9]+;)*5(?:;[0-9]+)*m")
STYLE = re.compile(r"\x1b\[[0-9;]*m")


def _terminal(*printed: object) -> str:
    buffer = io.StringIO()
    console = Console(  # as jaco's own consoles, on a terminal
        file=buffer, force_terminal=True, color_system="standard", width=400, highlight=False
    )
    for thing in printed:
        console.print(thing)
    return buffer.getvalue()


def test_rich_acts_on_markup_and_escapes_unless_escaped() -> None:
    raw = _terminal(HOSTILE)
    assert BLINK.search(raw)
    assert "\x1b]8;" in raw and "\x1b[2J" in raw  # a hyperlink, the screen cleared
    assert "[bold red blink]" not in raw
    shown = _terminal(safe(HOSTILE), table(("A",), [(HOSTILE,)], title=HOSTILE))
    assert not BLINK.search(shown)
    assert "\x1b" not in STYLE.sub("", shown)  # only rich's own styles (bold header...)
    for acted in ("\r", "\u202e", "\u2066"):
        assert acted not in shown
    for literal in ("[bold red blink]x[/]", "[link=https://evil.example]", "\\x1b[2J", "\\x0d"):
        assert literal in shown
    assert "\\u202e" in shown and "w\\nv" in shown
