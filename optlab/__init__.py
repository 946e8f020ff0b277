"""optlab: matrix-aware optimizers as composable optax transforms.

The public API is what this module re-exports; everything else may change.
"""

from optlab import analysis, lab, linalg
from optlab.muon import (
    MuonDimensionNumbers,
    ScaleByMuonState,
    muon,
    muon_labels,
    orthogonalize_muon,
    scale_by_muon,
)
from optlab.sam import SAMPerturbState, sam, sam_perturb, sam_perturbation
from optlab.shampoo import ShampooChainState, ShampooState, scale_by_shampoo, shampoo

__all__ = [
    "MuonDimensionNumbers",
    "SAMPerturbState",
    "ScaleByMuonState",
    "ShampooChainState",
    "ShampooState",
    "analysis",
    "lab",
    "linalg",
    "muon",
    "muon_labels",
    "orthogonalize_muon",
    "sam",
    "sam_perturb",
    "sam_perturbation",
    "scale_by_muon",
    "scale_by_shampoo",
    "shampoo",
]

__version__ = "0.1.0"
