"""Compiled program size of optlab's stacked optimizers as the model gets deeper.

XLA generates code once per distinct fusion body and reuses it for identical ones, so the
number of distinct bodies is what compile time follows (benchmarks/compile_time.py measures
the seconds). Muon, Shampoo and SOAP cut each layer out of stacked results at rows written
with runtime digits from their state (``common.runtime_digits``), and K-FAC cuts each layer's
factors out of its buffers at offsets written the same way: layers of one shape then share
their kernels, and adding layers of an existing shape adds no distinct body. With the rows as
constants every layer adds at least one (a slice at its own offset).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import optlab

_METADATA = re.compile(r", metadata=\{[^}]*\}")
_NAME = re.compile(r"%[\w.\-]+")


def distinct_fusions(hlo: str) -> int:
    """Fusion bodies of an optimized HLO module that differ once names and metadata are
    stripped."""
    out = set()
    for match in re.finditer(r"^%[\w.\-]*fused[\w.\-]* \(.*?\n}\n", hlo, re.M | re.S):
        body = match.group(0).split("\n", 1)[1]
        out.add(_NAME.sub("%", _METADATA.sub("", body)))
    return len(out)


def mlp(depth: int, width: int = 32) -> dict:
    """``depth`` hidden layers of one shape between an input and an output layer."""
    shapes = [(8, width)] + [(width, width)] * depth + [(width, 3)]
    return {
        f"layer_{i}": {
            "kernel": jax.ShapeDtypeStruct(s, jnp.float32),
            "bias": jax.ShapeDtypeStruct(s[1:], jnp.float32),
        }
        for i, s in enumerate(shapes)
    }


OPTIMIZERS = {
    "muon": lambda: optlab.muon(0.02),
    "shampoo": lambda: optlab.shampoo(1e-3, block_size=16),
    "soap": lambda: optlab.soap(1e-3, block_size=16),
    "kfac": lambda: optlab.kfac(1e-3, damping=1e-3),
}


def kfac_curvature(params: dict) -> dict:
    """Abstract per-layer factors, as ``kfac_value_and_grad`` returns them for ``mlp``."""
    f32 = jnp.float32
    return {
        name: optlab.KFACFactors(
            jax.ShapeDtypeStruct((layer["kernel"].shape[0] + 1,) * 2, f32),
            jax.ShapeDtypeStruct((layer["kernel"].shape[1],) * 2, f32),
        )
        for name, layer in params.items()
    }


def update_program(tx: optax.GradientTransformation, params: dict, kfac: bool) -> str:
    def step(params, state, grads, *curvature):
        extra = {"curvature": curvature[0]} if kfac else {}
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    state = jax.eval_shape(tx.init, params)
    curvature = (kfac_curvature(params),) if kfac else ()
    return jax.jit(step).lower(params, state, params, *curvature).compile().as_text()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_distinct_kernels_do_not_grow_with_layers_of_one_shape(name):
    # 24 and 48 hidden layers write every row and vector offset with the same number of digits
    # (2 for rows, 3 for the biases' offsets); a different count of digits is a different body.
    kfac = name == "kfac"
    shallow = distinct_fusions(update_program(OPTIMIZERS[name](), mlp(24), kfac))
    deep = distinct_fusions(update_program(OPTIMIZERS[name](), mlp(48), kfac))
    # 24 more layers (48 leaves, 96 blocks of 16 x 16 for Shampoo and SOAP) add at least 24
    # distinct bodies with constant rows (measured before the digits: +24 Muon, +48 Shampoo,
    # +192 SOAP, +121 K-FAC). A few may still differ: a row whose digits repeat
    # (17 = digits[1] * 16 + digits[1]) passes one scalar twice, which XLA merges into one
    # fusion parameter.
    assert deep <= shallow + 4, (shallow, deep)
