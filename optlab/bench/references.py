"""The works optlab cites, in one place: a short form for the text and the full reference.

Docstrings, ``optlab compare --list``, task descriptions and ``results.json`` cite by the short
form (:attr:`Reference.short`); ``--list`` ends with the full references and ``results.json``
carries the full reference of every work its text cites (:func:`cited_in`).

Kuznetsova (2023)
    M. P. Kuznetsova, "An experimental study of modern curvature-aware optimization methods
    for training neural networks", graduation thesis, Lomonosov Moscow State University,
    Faculty of Computational Mathematics and Cybernetics, 2023 (advisor A. F. Izmailov).
Merkulov, "Modern optimization methods"
    D. Merkulov, "Modern optimization methods for training neural networks", lecture
    ("Optimization for all!" series).
Merkulov, "Stories from training neural networks"
    D. Merkulov, "Stories from training neural networks: Sharpness-Aware Minimization, Mode
    Connectivity, Grokking, Double Descent", seminar, course "Convex optimization methods",
    week 14 ("Optimization for all!" series).
Merkulov and Ostroukhov, "SGD. Adaptive methods"
    D. Merkulov, P. Ostroukhov, "Stochastic gradient descent. Adaptive methods", seminar,
    course "Convex optimization methods" ("Optimization for all!" series).
Eschenhagen et al., "Clarifying Shampoo"
    Eschenhagen, Cai, Lee, Shi, "Clarifying Shampoo", arXiv:2602.09314.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class Reference(NamedTuple):
    """A cited work: the short form used in running text and the full reference."""

    short: str
    full: str


KUZNETSOVA_2023 = Reference(
    "Kuznetsova (2023)",
    'M. P. Kuznetsova, "An experimental study of modern curvature-aware optimization methods '
    'for training neural networks", graduation thesis, Lomonosov Moscow State University, '
    "Faculty of Computational Mathematics and Cybernetics, 2023 (advisor A. F. Izmailov)",
)
MERKULOV_MODERN = Reference(
    'Merkulov, "Modern optimization methods"',
    'D. Merkulov, "Modern optimization methods for training neural networks", lecture '
    '("Optimization for all!" series)',
)
MERKULOV_STORIES = Reference(
    'Merkulov, "Stories from training neural networks"',
    'D. Merkulov, "Stories from training neural networks: Sharpness-Aware Minimization, Mode '
    'Connectivity, Grokking, Double Descent", seminar, course "Convex optimization methods", '
    'week 14 ("Optimization for all!" series)',
)
MERKULOV_OSTROUKHOV_SGD = Reference(
    'Merkulov and Ostroukhov, "SGD. Adaptive methods"',
    'D. Merkulov, P. Ostroukhov, "Stochastic gradient descent. Adaptive methods", seminar, '
    'course "Convex optimization methods" ("Optimization for all!" series)',
)
ESCHENHAGEN_2026 = Reference(
    'Eschenhagen et al., "Clarifying Shampoo"',
    'Eschenhagen, Cai, Lee, Shi, "Clarifying Shampoo", arXiv:2602.09314',
)

REFERENCES: tuple[Reference, ...] = (
    KUZNETSOVA_2023,
    MERKULOV_MODERN,
    MERKULOV_STORIES,
    MERKULOV_OSTROUKHOV_SGD,
    ESCHENHAGEN_2026,
)
"""Every work optlab cites."""


def cited_in(texts: Iterable[str]) -> dict[str, str]:
    """``{short: full}`` for every reference whose short form occurs in one of ``texts``."""
    joined = "\n".join(texts)
    return {r.short: r.full for r in REFERENCES if r.short in joined}


def references_text() -> str:
    """The full references, one per line, for ``optlab compare --list``."""
    return "\n".join(f"  {r.short}: {r.full}" for r in REFERENCES)
