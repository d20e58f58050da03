"""What every `jaco` command shares: options, one-line errors, output helpers.

Expected failures print one line to stderr and exit with the error's code; never a
traceback. Text that comes from a server or an archive is printed escaped: no markup, no
control characters reach the terminal.
"""

from __future__ import annotations

import functools
import getpass
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from jaco.errors import InvalidArgument, JacoError

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

    from jaco.node.config import DataDir

F = TypeVar("F", bound=Callable[..., Any])
SECRET_MAX = 64 * 1024  # far more than any token: a wrong file is not read whole
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Server = Annotated[
    str,
    typer.Option(
        "--server",
        "-s",
        envvar="JACO_SERVER",
        help="A jacod API address HOST:PORT (env JACO_SERVER; default: the node on this host, "
        "127.0.0.1:7000).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="The node's data dir (default $JACO_DATA_DIR or /var/lib/jaco)."
    ),
]
AdvertiseHost = Annotated[
    str | None, typer.Option(help="Host or IP other nodes and clients reach this node at.")
]
ApiPort = Annotated[int, typer.Option(help="Port the jacod API will listen on.")]
ClientPort = Annotated[int, typer.Option(help="Loopback port of the node's etcd client API.")]
PeerPort = Annotated[int, typer.Option(help="Port of the node's etcd peer (raft) traffic.")]


# Control characters, and the Unicode controls that reorder or hide text on a terminal
# (bidirectional overrides and isolates, as in "Trojan Source").
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe(text: object) -> str:
    """`text` made harmless for the terminal: rich markup escaped, control characters
    (ANSI escapes, carriage returns, newlines...) shown as \\xNN instead of acted on."""
    cleaned = _CONTROL.sub(_shown, str(text).replace("\n", "\\n"))
    return escape(cleaned)


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], title: object = "") -> Table:
    """A table of what a server or an archive said: the title and every cell escaped."""
    from rich.table import Table

    shown = Table(title=safe(title) if title else None, show_header=bool(columns))
    for column in columns:
        shown.add_column(column)
    for row in rows:
        shown.add_row(*(safe(cell) for cell in row))
    return shown


def print_table(shown: Table) -> None:
    """A table at its natural width, wider than the terminal if it must be, as kubectl and
    etcdctl print theirs (the terminal wraps the long lines). Rich fits a table to the
    terminal, or to 80 columns in a pipe, by cutting cells with "…": a backup's key, a
    checksum or a name that an operator cannot copy or compare."""
    from rich.measure import Measurement
    from rich.segment import Segments

    unbounded = out.options.update(width=1 << 16)
    natural = max(
        Measurement.get(out, unbounded, part).maximum for part in (shown, shown.title or "")
    )
    # no_wrap: a title wider than the table stays one line (rich wraps it to the table's width)
    options = out.options.update(width=max(natural, out.width), no_wrap=True, overflow="ignore")
    lines = out.render_lines(shown, options, pad=False, new_lines=True)
    out.print(Segments([segment for line in lines for segment in line]))  # `out` soft-wraps


def check_range(flag: str, value: float, low: float, high: float, unit: str = "") -> None:
    """Refuse a number outside [low, high] (and NaN) before anything is sent: protobuf would
    raise on an out-of-range integer, and a server should not be asked to judge it."""
    if not low <= value <= high:  # NaN fails both comparisons
        raise InvalidArgument(f"invalid {flag} {value}: use {low} to {high}{unit}")


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {safe(message)}", soft_wrap=True)
    return typer.Exit(code)


def operator_errors(fn: F) -> F:
    """Turn JacoErrors into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except JacoError as exc:
            raise fail(exc.message, exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except OSError as exc:  # the filesystem refused: say what and where, no traceback
            where = f": {exc.filename}" if exc.filename else ""
            raise fail(f"{exc.strerror or exc}{where}") from None

    return wrapper  # type: ignore[return-value]


def read_secret(path: Path, what: str) -> str:
    """A secret from a file, or from stdin for `-` (without echo on a terminal): never from an
    argument list, which `ps` shows to every local user."""
    where = "stdin" if str(path) == "-" else str(path)
    try:
        if str(path) != "-":
            with open(path, encoding="utf-8") as handle:
                text = handle.read(SECRET_MAX)
        elif sys.stdin.isatty():
            text = getpass.getpass(f"{what}: ")
        else:
            text = sys.stdin.read(SECRET_MAX)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the {what} from {where}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{where} does not hold a {what} (it is not text)") from None
    if not text.strip():
        raise InvalidArgument(f"{where} holds no {what}")
    return text.strip()


def open_data_dir(path: Path | None) -> DataDir:
    from jaco.node.config import DataDir, data_dir_from_env

    return DataDir(path or data_dir_from_env())


def primed(data: DataDir, warnings: list[str]) -> None:
    """What a command that primed a data dir says last: how to start its node (the systemd
    unit serves the default data dir; jacod takes the node's name from the data dir), then
    its warnings, after the work, so that a refusal stays its one line."""
    from jaco.node.config import DEFAULT_DATA_DIR

    where = data.path.absolute()
    if where == Path(DEFAULT_DATA_DIR):
        out.print(f"Start it: systemctl start jaco  (or: jacod --data-dir {safe(where)})")
    else:
        out.print(f"Start it: jacod --data-dir {safe(where)}")
    for line in warnings:
        err.print(safe(line))


def message_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(message: Any) -> None:
    if hasattr(message, "DESCRIPTOR"):
        message = message_dict(message)
    print(json.dumps(message, indent=2, default=str), flush=True)


def progress() -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
