r"""Everything the CLI prints: control characters shown as escapes, tables fitted to the terminal with Rich.

Model- and tool-provided text reaches the operator's terminal through `echo`, `error` and `print_table`
only, and each passes it through `visible` first: an ANSI or OSC sequence in a tool's arguments shows
as `\x1b[31m`, it does not recolour the terminal. Table cells are `rich.text.Text` (never Rich markup),
so `[red]` in a cell is printed as is.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._text import json_escaped, visible

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Column", "echo", "error", "print_json", "print_table", "terminal_width"]

DEFAULT_WIDTH = 100
"""Columns of a terminal whose width cannot be read."""

_GAP = 2
_MIN_LAST = 12


@dataclass(frozen=True)
class Column:
    """A table column: its header, and how its cells are drawn."""

    header: str
    right: bool = False
    max_width: int | None = None
    """Cells wider than this are cut with `…` (the last column takes whatever width is left)."""
    styles: Mapping[str, str] = field(default_factory=dict[str, str])
    """Rich style per cell value (task states), used when stdout is a colour terminal."""


def echo(text: str) -> None:
    """Print `text` (lines kept) with every other control character escaped."""
    print(visible(text, keep_newlines=True))


def print_json(document: Any) -> None:
    """Print `document` as indented JSON; non-ASCII text stays readable, control characters are escaped."""
    print(json_escaped(json.dumps(document, ensure_ascii=False, indent=2, default=str)))


def error(text: str) -> None:
    """Print `text` to stderr as one line, control characters (newlines too) escaped."""
    print(visible(text), file=sys.stderr)


def terminal_width() -> int | None:
    """$COLUMNS, else the terminal's width when stdout is one, else `None`: a pipe or a file gets whole lines."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    return None


def _console(width: int) -> Console:
    from rich.console import Console

    # Rich decides on colour: a terminal, unless NO_COLOR is set (FORCE_COLOR forces it).
    return Console(file=sys.stdout, width=width, highlight=False, markup=False, emoji=False, soft_wrap=False)


def _widths(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None) -> list[int]:
    natural = [max([len(column.header), *(len(row[index]) for row in rows)]) for index, column in enumerate(columns)]
    fixed = [
        min(size, column.max_width) if column.max_width else size
        for size, column in zip(natural[:-1], columns[:-1], strict=True)
    ]
    if width is None:
        return [*fixed, natural[-1]]
    left = width - sum(fixed) - _GAP * (len(columns) - 1)
    return [*fixed, max(min(natural[-1], left), min(natural[-1], _MIN_LAST))]


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """Print `rows` under `columns`, as wide as the terminal: the last column is cut with `…` to fit.

    The other columns keep their width (up to their `max_width`), so a table of long ids may be wider than
    the terminal. On a pipe or file (no terminal, no $COLUMNS), only `max_width` cuts cells.
    """
    from rich.table import Table
    from rich.text import Text

    cells = [[visible(cell) for cell in row] for row in rows]
    widths = _widths(columns, cells, terminal_width())
    # Ids and tokens are never cut (they are copied into the next command): a terminal too narrow for them
    # wraps the lines instead.
    width = sum(widths) + _GAP * (len(widths) - 1)
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, _GAP // 2), header_style="bold")
    for column, size in zip(columns, widths, strict=True):
        table.add_column(
            column.header, width=size, no_wrap=True, overflow="ellipsis", justify="right" if column.right else "left"
        )
    for row in cells:
        table.add_row(
            *(Text(cell, style=column.styles.get(cell, "")) for cell, column in zip(row, columns, strict=True))
        )
    console = _console(width)
    with console.capture() as capture:
        console.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in capture.get().splitlines()))
