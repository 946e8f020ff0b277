"""Naming conventions shared by the example models, and a parameter counter.

Matrix-aware optimizers treat some layers differently from the rest: Muon and Shampoo are
meant for hidden weight matrices only, while embeddings, the output layer and (in ConvNets)
the first convolution usually go to AdamW (Jordan et al. 2024, "Muon: An optimizer for hidden
layers in neural networks"; Liu et al. 2025, arXiv 2502.16982). Label helpers find those
layers by the names on a parameter's path, so every model here uses the same names:

* ``embed``, ``pos_embed``: token and positional embeddings (``nnx.Embed``);
* ``head`` (classifiers, taggers) or ``lm_head`` (language models): the output layer;
* ``stem``: the first convolution applied to the raw image (LeNet-5's C1, ResNet's 3x3 stem).

Everything else (``layers``, ``blocks``, ``c3``, ``query``, ...) is a hidden layer.
"""

from __future__ import annotations

from flax import nnx

EMBEDDING_NAMES: tuple[str, ...] = ("embed", "pos_embed")
"""Attribute names of embedding tables (``nnx.Embed``) in optlab's example models."""

HEAD_NAMES: tuple[str, ...] = ("head", "lm_head")
"""Attribute names of output layers in optlab's example models."""

STEM_NAMES: tuple[str, ...] = ("stem",)
"""Attribute names of the first convolution on raw images in optlab's example models."""


def count_params(model: nnx.Module, wrt: nnx.filterlib.Filter = nnx.Param) -> int:
    """Number of scalars in the variables of ``model`` that match ``wrt``.

    Args:
        model: any NNX module.
        wrt: which variables to count; the default counts trainable parameters only, so
            BatchNorm's running statistics (``nnx.BatchStat``) are left out.

    Returns:
        The total number of elements, as a Python int.
    """
    state = nnx.state(model, wrt)
    return sum(int(v.size) for _, v in nnx.to_flat_state(state))
