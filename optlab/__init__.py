"""optlab: matrix-aware optimizers as composable optax transforms.

The public API is what this module re-exports; everything else may change. The transforms
live in private modules under ``optlab._src`` (as optax keeps ``optax/_src``); import them from
here. ``optlab.models``, ``optlab.data`` and ``optlab.bench`` load on first access (they import
Flax and the harness, which the transforms do not need).
"""

import importlib
from typing import Any

from optlab import analysis, lab, linalg
from optlab._src.common import SkipNonFiniteState, skip_nonfinite
from optlab._src.muon import (
    MUON_EXCLUDED_NAMES,
    MuonDimensionNumbers,
    ScaleByMuonState,
    muon,
    muon_labels,
    orthogonalize_muon,
    scale_by_muon,
)
from optlab._src.sam import SAMPerturbState, sam, sam_perturb, sam_perturbation
from optlab._src.shampoo import ShampooState, scale_by_shampoo, shampoo

_LAZY_SUBMODULES = ("bench", "data", "models")

__all__ = [
    "MUON_EXCLUDED_NAMES",
    "MuonDimensionNumbers",
    "SAMPerturbState",
    "ScaleByMuonState",
    "ShampooState",
    "SkipNonFiniteState",
    "analysis",
    "bench",
    "data",
    "lab",
    "linalg",
    "models",
    "muon",
    "muon_labels",
    "orthogonalize_muon",
    "sam",
    "sam_perturb",
    "sam_perturbation",
    "scale_by_muon",
    "scale_by_shampoo",
    "shampoo",
    "skip_nonfinite",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # PEP 562: `optlab.models` works after `import optlab` without paying Flax's import time
    # (~0.15 s) in programs that only use the transforms.
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"optlab.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'optlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
