"""optlab: matrix-aware optimizers as composable optax transforms.

The public API is what this module re-exports; everything else may change. The transforms
live in private modules under ``optlab._src`` (as optax keeps ``optax/_src``); import them from
here. ``optlab.models``, ``optlab.data`` and ``optlab.bench`` load on first access (they import
Flax and the harness, which the transforms do not need).
"""

import importlib
from typing import Any

from optlab import analysis, lab, linalg
from optlab._src.blocked import BlockMomentumState
from optlab._src.common import SkipNonFiniteState, skip_nonfinite
from optlab._src.kfac import KFACLayer, KFACState, kfac, kfac_layers, scale_by_kfac
from optlab._src.kfac_curvature import (
    KFACFactors,
    kfac_dense_factors,
    kfac_embed_factors,
    kfac_value_and_grad,
)
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
from optlab._src.sharding import state_sharding
from optlab._src.soap import SoapState, scale_by_soap, soap

_LAZY_SUBMODULES = ("bench", "data", "models")

__all__ = [
    "BlockMomentumState",
    "KFACFactors",
    "KFACLayer",
    "KFACState",
    "MUON_EXCLUDED_NAMES",
    "MuonDimensionNumbers",
    "SAMPerturbState",
    "ScaleByMuonState",
    "ShampooState",
    "SkipNonFiniteState",
    "SoapState",
    "analysis",
    "bench",
    "data",
    "kfac",
    "kfac_dense_factors",
    "kfac_embed_factors",
    "kfac_layers",
    "kfac_value_and_grad",
    "lab",
    "linalg",
    "models",
    "muon",
    "muon_labels",
    "orthogonalize_muon",
    "sam",
    "sam_perturb",
    "sam_perturbation",
    "scale_by_kfac",
    "scale_by_muon",
    "scale_by_shampoo",
    "scale_by_soap",
    "shampoo",
    "skip_nonfinite",
    "soap",
    "state_sharding",
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
