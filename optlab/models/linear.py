"""Linear classifiers and multilayer perceptrons.

Both flatten every axis after the batch axis, so they take feature vectors ``(B, n)`` and
images ``(B, H, W, C)`` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _flatten(x: jax.Array) -> jax.Array:
    return jnp.reshape(x, (x.shape[0], -1))


class LogisticRegression(nnx.Module):
    """Multinomial logistic regression: one linear layer, ``head``, returning logits.

    Pair it with softmax cross-entropy (``optax.softmax_cross_entropy_with_integer_labels``).
    With ``num_classes=1, use_bias=False`` it is the binary model ``<a, w>`` of the strongly
    convex logistic regression in Merkulov, "Modern optimization methods"; see
    :func:`optlab.data.logistic_regression_objective` for that loss.

    Args:
        in_features: number of input features (the product of the non-batch axes).
        num_classes: number of output logits.
        use_bias: whether the layer has a bias.
        rngs: random streams for initialization.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 10,
        *,
        use_bias: bool = True,
        rngs: nnx.Rngs,
    ):
        # Zero init: the loss is convex, so the origin is a fine, seed-independent start.
        self.head = nnx.Linear(
            in_features,
            num_classes,
            use_bias=use_bias,
            kernel_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` for inputs ``(B, ...)``."""
        return self.head(_flatten(x))


class MLP(nnx.Module):
    """Fully connected network: ``layers[i]`` (Linear + activation) for each width, then ``head``.

    Args:
        in_features: number of input features (the product of the non-batch axes).
        num_classes: number of output logits.
        hidden: widths of the hidden layers, in order; empty gives a linear model.
        activation: elementwise nonlinearity after each hidden layer.
        rngs: random streams for initialization.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 10,
        hidden: Sequence[int] = (128, 128),
        *,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        rngs: nnx.Rngs,
    ):
        widths = [in_features, *hidden]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` for inputs ``(B, ...)``."""
        h = _flatten(x)
        for layer in self.layers:
            h = self.activation(layer(h))
        return self.head(h)
