"""LeNet-5 as Kuznetsova (2023) describes it.

LeCun, Bottou, Bengio, Haffner (1998), "Gradient-based learning applied to document
recognition"; Kuznetsova (2023), "An experimental study of modern curvature-aware optimization
methods for training neural networks" (the thesis; full reference in
:mod:`optlab.bench.references`), sec. 4.1 (layers) and sec. 1.3, 1.5 (max pooling, ReLU).
Layers, on a ``32x32x1`` input (NHWC):

========  =================================  =============  ==========
thesis    here                               output         parameters
========  =================================  =============  ==========
C1        ``stem``: conv 5x5, 6 filters      28x28x6        156
S2        max pool 2x2, stride 2             14x14x6        0
C3        ``c3``: conv 5x5, 16 filters       10x10x16       2,416
S4        max pool 2x2, stride 2             5x5x16         0
C5        ``c5``: conv 5x5, 120 filters      1x1x120        48,120
F6        ``f6``: dense, 84 units            84             10,164
OUTPUT    ``head``: dense                    num_classes    850 (10 classes)
========  =================================  =============  ==========

61,706 parameters with 10 classes. The thesis (sec. 1.5) uses ReLU after the convolutional
and hidden layers and max pooling for subsampling (sec. 1.3), not the original tanh and
trainable average pooling; C3 is fully connected to S2's six maps (no 1998 connection table),
and the output is a plain linear layer followed by softmax in the loss (no RBF units).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class LeNet5(nnx.Module):
    """LeNet-5 for ``(B, 32, 32, C)`` images (NHWC), returning logits ``(B, num_classes)``.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input image (1 for MNIST or digits).
        rngs: random streams for initialization.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, rngs: nnx.Rngs):
        # VALID padding everywhere: 32 -> 28 -> 14 -> 10 -> 5 -> 1, as in the thesis.
        self.stem = nnx.Conv(in_channels, 6, (5, 5), padding="VALID", rngs=rngs)  # C1
        self.c3 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
        self.c5 = nnx.Conv(16, 120, (5, 5), padding="VALID", rngs=rngs)
        self.f6 = nnx.Linear(120, 84, rngs=rngs)
        self.head = nnx.Linear(84, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)``; a ``(B, 32, 32)`` input is read as one channel."""
        if x.ndim == 3:
            x = x[..., None]
        x = jax.nn.relu(self.stem(x))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))  # S2
        x = jax.nn.relu(self.c3(x))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))  # S4
        x = jax.nn.relu(self.c5(x))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = jax.nn.relu(self.f6(x))
        return self.head(x)
