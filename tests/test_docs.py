"""The documentation site builds with warnings as errors, and it documents the public API.

The build is the documented command (``sphinx-build -W -b html docs <out>``) into a temporary
folder; the notebooks are rendered from their stored outputs, not executed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import optlab

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOCS_EXTRA = "the docs extra is not installed (pip install -e '.[docs]'; '.[test]' includes it)"


def _public_names(module) -> list[str]:
    return [n for n in module.__all__ if not isinstance(getattr(module, n), type(sys))]


def test_api_reference_lists_every_public_name_of_optlab():
    # The optimizers page lists names by hand (grouped); a new export must be added there.
    text = (DOCS / "api" / "optimizers.md").read_text()
    listed = set(re.findall(r"^   (\w+)$", text, flags=re.MULTILINE))
    assert set(_public_names(optlab)) - listed == set()


@pytest.mark.parametrize("module", ["linalg", "analysis", "lab", "bench", "models", "data"])
def test_api_reference_has_a_page_for_each_public_subpackage(module):
    assert f".. automodule:: optlab.{module}" in (DOCS / "api" / f"{module}.md").read_text()


def test_api_reference_has_every_lab_experiment():
    text = (DOCS / "api" / "lab.md").read_text()
    # sharpness is re-exported by optlab.lab itself (its page documents those functions).
    experiments = [
        n
        for n in optlab.lab.__all__
        if isinstance(getattr(optlab.lab, n), type(sys)) and n != "sharpness"
    ]
    assert [n for n in experiments if f".. automodule:: optlab.lab.{n}" not in text] == []


def test_docs_build_without_warnings(tmp_path):
    for name in ("sphinx", "myst_nb", "furo"):
        pytest.importorskip(name, reason=DOCS_EXTRA)
    out = tmp_path / "html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    shampoo = (out / "api" / "_autosummary" / "optlab.scale_by_shampoo.html").read_text()
    assert "precondition_every" in shampoo and "Gupta" in shampoo  # options and references
    notebook = (out / "notebooks" / "03_sam_sharpness.html").read_text()
    assert "colab-badge.svg" in notebook
    assert re.search(r'<img[^>]+src="[^"]*\.png"', notebook), "stored plot not rendered"
    for page in ("readme.html", "lab.html", "benchmarks.html", "api/index.html"):
        assert (out / page).exists(), page
