"""ResNet-18, CIFAR variant, with BatchNorm.

He, Zhang, Ren, Sun (2016), "Deep residual learning for image recognition"; Kuznetsova (2023),
sec. 4.2 (ResNet-18 on CIFAR-10). The CIFAR variant (as in the widely used PyTorch
reproductions, e.g. kuangliu/pytorch-cifar) replaces ImageNet's 7x7/2 stem and max pool by one
3x3/1 convolution, so a 32x32 image keeps its resolution through the first stage:

* ``stem``: conv 3x3, ``width`` filters, stride 1, then ``stem_bn`` and ReLU;
* ``blocks``: ``sum(stage_sizes)`` basic blocks (two 3x3 convs with BatchNorm, identity or
  1x1-conv shortcut); stage ``i`` has ``width * 2**i`` filters and stride 2 from stage 1 on
  (32 -> 16 -> 8 -> 4 for CIFAR);
* global average pooling, then ``head`` (dense).

With the defaults (width 64, stages ``(2, 2, 2, 2)``, 10 classes) it has 11,173,962
parameters, as the PyTorch version. A small ``width`` (e.g. 4) builds a tiny one for tests.

Modes: ``model.train()`` normalizes with batch statistics and updates the running averages
(``nnx.BatchStat``); ``model.eval()`` uses the running averages. Convolutions have no bias
(BatchNorm follows each). Padding is explicit ``(1, 1)`` like PyTorch's ``padding=1``
(Flax's ``"SAME"`` pads asymmetrically at stride 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# He et al.'s initialization for ReLU networks (torchvision: kaiming_normal_, fan_out).
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, *, rngs: nnx.Rngs) -> nnx.Conv:
    pad = (kernel - 1) // 2
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_conv_init,
        rngs=rngs,
    )


def _bn(ch: int, momentum: float, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(ch, momentum=momentum, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or ``shortcut`` (1x1 conv, stride ``stride``) followed by
    ``shortcut_bn`` when the stride or the number of channels changes (He et al.'s option B).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        *,
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        self.conv1 = _conv(in_ch, out_ch, 3, stride, rngs=rngs)
        self.bn1 = _bn(out_ch, bn_momentum, rngs=rngs)
        self.conv2 = _conv(out_ch, out_ch, 3, 1, rngs=rngs)
        self.bn2 = _bn(out_ch, bn_momentum, rngs=rngs)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = _conv(in_ch, out_ch, 1, stride, rngs=rngs)
            self.shortcut_bn = _bn(out_ch, bn_momentum, rngs=rngs)
        else:
            self.shortcut = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        return jax.nn.relu(y + skip)


class ResNet18(nnx.Module):
    """ResNet-18 (CIFAR variant) for ``(B, H, W, C)`` images, returning ``(B, num_classes)``.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input image (3 for CIFAR-10).
        width: filters of the stem and the first stage; stage ``i`` has ``width * 2**i``.
          64 is ResNet-18; use a small value (4, 8) for quick tests.
        stage_sizes: basic blocks per stage; ``(2, 2, 2, 2)`` is ResNet-18, ``(3, 4, 6, 3)``
          ResNet-34.
        bn_momentum: decay of BatchNorm's running averages (Flax convention; 0.9 is
          PyTorch's ``momentum=0.1``).
        rngs: random streams for initialization.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        width: int = 64,
        stage_sizes: Sequence[int] = (2, 2, 2, 2),
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        self.stem = _conv(in_channels, width, 3, 1, rngs=rngs)
        self.stem_bn = _bn(width, bn_momentum, rngs=rngs)
        blocks = []
        in_ch = width
        for i, n_blocks in enumerate(stage_sizes):
            out_ch = width * 2**i
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, bn_momentum=bn_momentum, rngs=rngs))
                in_ch = out_ch
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(in_ch, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)``. Uses batch statistics unless ``model.eval()``."""
        x = jax.nn.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        x = jnp.mean(x, axis=(1, 2))  # global average pooling
        return self.head(x)
