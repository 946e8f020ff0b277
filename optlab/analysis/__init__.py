"""Analysis tools: how matrix-aware optimizers relate (e.g. Shampoo as an adapted Muon)."""

from optlab.analysis.shampoo_muon import (
    SemiOrthogonality,
    ShampooMuonFactors,
    semi_orthogonality,
    shampoo_muon_decomposition,
)

__all__ = [
    "SemiOrthogonality",
    "ShampooMuonFactors",
    "semi_orthogonality",
    "shampoo_muon_decomposition",
]
