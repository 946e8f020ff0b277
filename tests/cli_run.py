"""Running ``optlab``'s command line inside a test: exit code and captured output."""

from __future__ import annotations

from typing import Any

from optlab.cli import main


def run_cli(argv: list[str], capsys: Any) -> tuple[Any, str, str]:
    """``(exit code, stdout, stderr)`` of ``optlab <argv>``; argparse's own exits (``--help``,
    usage errors) are caught as their codes, optlab's errors are returned."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
