"""Flax NNX example models for optlab's experiments.

Every model takes ``rngs: nnx.Rngs`` (keyword-only) and returns logits; the loss
(softmax cross-entropy, usually) is left to the training loop. Images are NHWC (Flax's
convention): ``(batch, height, width, channels)``.

===================  ======================================  ==================================
model                input -> output                         default size (parameters)
===================  ======================================  ==================================
LogisticRegression   ``(B, ...)`` -> ``(B, classes)``        ``n * classes + classes``
MLP                  ``(B, ...)`` -> ``(B, classes)``        widths ``(128, 128)``
LeNet5               ``(B, 32, 32, 1)`` -> ``(B, classes)``  61,706 (Kuznetsova (2023) 4.1)
ResNet18             ``(B, 32, 32, 3)`` -> ``(B, classes)``  11,173,962 (Kuznetsova (2023) 4.2)
LSTMTagger           ``(B, T)`` tokens -> ``(B, T, tags)``   embed 64, hidden 128
Transformer          ``(B, T)`` tokens -> ``(B, T, vocab)``  d 128, 4 heads, 2 layers
===================  ======================================  ==================================

Layer names (a contract: label helpers that route parameters by path rely on it):

* ``embed``, ``pos_embed``: embedding tables (``nnx.Embed``) -> :data:`EMBEDDING_NAMES`;
* ``head`` (classifiers, the tagger) and ``lm_head`` (the Transformer): output layers ->
  :data:`HEAD_NAMES`;
* ``stem``: the first convolution on the raw image (LeNet-5's C1, ResNet's 3x3 stem) ->
  :data:`STEM_NAMES`;
* all other weights are hidden layers. Dense kernels are 2D ``(in, out)``; convolution
  kernels are 4D ``(kh, kw, in, out)``; attention projections are separate 2D
  ``(d_model, d_model)`` kernels (``query``, ``key``, ``value``, ``out``); the LSTM cell has
  2D ``dense_i`` ``(in, 4h)`` and ``dense_h`` ``(h, 4h)`` kernels. Norm scales, biases and
  BatchNorm statistics are 1D.

Muon (and matrix preconditioners generally) should see only the hidden weight matrices; the
embeddings, the output layer and the conv stem go to AdamW (Jordan et al. 2024). A path such
as ``("blocks", 0, "attn", "query", "kernel")`` names a hidden matrix;
``("lm_head", "kernel")`` names the output layer.
"""

from optlab.models.common import EMBEDDING_NAMES, HEAD_NAMES, STEM_NAMES, count_params
from optlab.models.lenet import LeNet5
from optlab.models.linear import MLP, LogisticRegression
from optlab.models.lstm import LSTMTagger
from optlab.models.resnet import BasicBlock, ResNet18
from optlab.models.transformer import CausalSelfAttention, Transformer, TransformerBlock

__all__ = [
    "EMBEDDING_NAMES",
    "HEAD_NAMES",
    "STEM_NAMES",
    "BasicBlock",
    "CausalSelfAttention",
    "LSTMTagger",
    "LeNet5",
    "LogisticRegression",
    "MLP",
    "ResNet18",
    "Transformer",
    "TransformerBlock",
    "count_params",
]
