"""Keep notebooks/ in order: paired py:percent sources, executed and stripped .ipynb files.

Each notebook is edited as ``notebooks/NAME.py`` (jupytext py:percent: diffs and reviews read
as code) and stored as ``notebooks/NAME.ipynb`` with its outputs (what Colab, GitHub and the
docs site show). This script makes the second from the first and checks that they agree.

    python tools/notebooks.py sync notebooks/01_quickstart.py [...]   # .py -> executed .ipynb
    python tools/notebooks.py sync --all                             # every notebook
    python tools/notebooks.py check                                  # pairs in sync, clean

``sync`` executes the notebook in a fresh kernel (nbclient) with the environment it is given, so
``OPTLAB_NOTEBOOK_SMALL=1 python tools/notebooks.py sync --all`` stores the small-setting
outputs. ``strip`` (used by ``sync``) removes what changes from run to run without saying
anything about the notebook (nbstripout-style): execution counts, cell metadata, per-run
notebook metadata, and gives the cells stable ids, so that a re-run changes only the outputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
FORMATS = "ipynb,py:percent"
# Notebook metadata that says something about the notebook (not about the run that made it).
KEEP_METADATA = ("kernelspec", "jupytext", "colab")
CELL_TIMEOUT_S = 900


def pairs() -> list[Path]:
    """The notebooks' .py sources, sorted (each should have an .ipynb next to it)."""
    return sorted(p for p in NOTEBOOKS.glob("*.py") if not p.name.startswith("_"))


def read_source(path: Path) -> nbformat.NotebookNode:
    """The notebook a py:percent file describes (cells only, no outputs)."""
    return jupytext.read(path, fmt="py:percent")


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove run-to-run noise in place (and return ``nb``); outputs are kept."""
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata = nbformat.from_dict(
        {k: v for k, v in nb.metadata.items() if k in KEEP_METADATA} | {"kernelspec": kernelspec}
    )
    nb.metadata.setdefault("jupytext", {})
    nb.metadata.jupytext = nbformat.from_dict({"formats": FORMATS})
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
        cell.metadata = nbformat.from_dict({})
        if cell.cell_type == "code":
            cell.execution_count = None
            for output in cell.outputs:
                if "execution_count" in output:
                    output.execution_count = None
                output.pop("transient", None)
                if "metadata" in output:
                    output.metadata = nbformat.from_dict({})
        else:
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
    return nb


def cells_of(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(type, source) of every cell: what the .py and the .ipynb must agree on."""
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def problems(ipynb: Path) -> list[str]:
    """Why ``ipynb`` is not the executed, stripped twin of its .py ([] if it is)."""
    source = ipynb.with_suffix(".py")
    if not source.exists():
        return [f"{ipynb.name}: no paired {source.name}"]
    if not ipynb.exists():
        return [f"{source.name}: no {ipynb.name} (run: python tools/notebooks.py sync {source})"]
    stored = nbformat.read(ipynb, as_version=4)
    found = []
    if cells_of(stored) != cells_of(read_source(source)):
        found.append(f"{ipynb.name} differs from {source.name} (run tools/notebooks.py sync)")
    clean = strip(nbformat.from_dict(stored))
    if nbformat.writes(clean) != nbformat.writes(stored):
        found.append(f"{ipynb.name} holds execution counts or metadata (run sync again)")
    code = [c for c in stored.cells if c.cell_type == "code" and c.source.strip()]
    if any(not c.outputs for c in code[-1:]):
        found.append(f"{ipynb.name}: stored without outputs (run sync)")
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    if errors:
        found.append(f"{ipynb.name}: a stored output is an error ({errors[0].ename})")
    return found


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = CELL_TIMEOUT_S) -> None:
    """Run every cell in a fresh python3 kernel; a failing cell raises CellExecutionError."""
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()


def sync(source: Path) -> float:
    """Execute ``source`` (.py) and write its stripped .ipynb; returns the seconds it took."""
    nb = read_source(source)
    start = time.perf_counter()
    execute(nb, source.parent)
    elapsed = time.perf_counter() - start
    nbformat.write(strip(nb), source.with_suffix(".ipynb"))
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_sync = sub.add_parser("sync", help="execute .py sources and store their .ipynb")
    p_sync.add_argument("sources", nargs="*", type=Path)
    p_sync.add_argument("--all", action="store_true", help="every notebooks/*.py")
    sub.add_parser("check", help="every pair in sync, stripped, with outputs")
    args = parser.parse_args(argv)
    if args.command == "sync":
        sources = pairs() if args.all else [p.resolve() for p in args.sources]
        if not sources:
            parser.error("sync: name .py files or pass --all")
        for source in sources:
            print(f"{source.name}: {sync(source):.1f} s", flush=True)
        return 0
    found = [msg for source in pairs() for msg in problems(source.with_suffix(".ipynb"))]
    found += [
        f"{p.name}: no paired .py"
        for p in NOTEBOOKS.glob("*.ipynb")
        if not p.with_suffix(".py").exists()
    ]
    print("\n".join(found) if found else f"{len(pairs())} notebooks in sync")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
