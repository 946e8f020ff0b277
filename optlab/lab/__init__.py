"""optlab.lab: experiments about training (sharpness, landscapes, ...).

* :mod:`optlab.lab.sharpness`: Hessian eigenvalues and trace;
* :mod:`optlab.lab.landscape`: filter-normalized 1D/2D loss landscapes, trajectory PCA
  (Li et al. 2018); ``optlab lab landscape`` on the command line;
* :mod:`optlab.lab.connect`: Bezier / polychain curves between two solutions (Garipov et al.
  2018); ``optlab lab connect`` on the command line.
* :mod:`optlab.lab.grokking`, :mod:`optlab.lab.double_descent`, :mod:`optlab.lab.rosenbrock`,
  :mod:`optlab.lab.sgd_noise`, :mod:`optlab.lab.init`: the lectures' training-dynamics
  experiments (grokking on modular division, polynomial double descent, optax's methods on
  Rosenbrock, SGD's noise floor, He vs Glorot initialization); ``optlab lab grokking`` /
  ``double-descent`` / ``rosenbrock`` / ``sgd-noise`` / ``init``.
* :mod:`optlab.lab.imbalance`: heavy-tailed (Zipf) class imbalance, mini-batch SGD vs Adam
  per decile of classes (Kunstner et al. 2024); ``optlab lab imbalance``.
* :mod:`optlab.lab.clarifying_shampoo`: the claims of Eschenhagen et al., "Clarifying
  Shampoo", measured on a byte-level LM (token efficiency of AdamW, Muon, Shampoo and SOAP
  with the same tuning, the matrices-vs-rest ablation, semi-orthogonality of the updates);
  ``optlab lab clarifying-shampoo``.

Lab tools may depend on optlab's transforms, models and data; transforms never import lab.
"""

from optlab.lab import (
    clarifying_shampoo,
    connect,
    double_descent,
    grokking,
    imbalance,
    init,
    landscape,
    rosenbrock,
    sgd_noise,
    sharpness,
)
from optlab.lab.sharpness import (
    HessianEigen,
    TraceEstimate,
    hessian_eigenvalues_lanczos,
    hessian_eigenvalues_power,
    hessian_trace,
    hessian_vector_product,
)

__all__ = [
    "HessianEigen",
    "TraceEstimate",
    "clarifying_shampoo",
    "connect",
    "double_descent",
    "grokking",
    "imbalance",
    "init",
    "hessian_eigenvalues_lanczos",
    "hessian_eigenvalues_power",
    "hessian_trace",
    "hessian_vector_product",
    "landscape",
    "rosenbrock",
    "sgd_noise",
    "sharpness",
]
