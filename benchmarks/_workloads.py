"""Parameter sets shared by the benchmark scripts (no optlab import).

``transformer_params``: the transformer-shaped set that the Muon and Shampoo benchmarks time
(issue 4 / 5): vocabulary 8192, d_model 512, 4 blocks each with separate 512 x 512 attention
projections ``query``/``key``/``value``/``out``, an MLP ``up`` 512 x 2048 and ``down``
2048 x 512 and two LayerNorms; an untied 8192 x 512 embedding, a final LayerNorm and a 512 x 8192
``lm_head`` (21.2 M float32 parameters). Names follow Flax (``embedding``, ``kernel``,
``scale``, ``bias``) so that path-based routing (``optlab.muon_labels``) sees what it would see
in a real model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

VOCAB, D_MODEL, D_MLP, N_BLOCKS = 8192, 512, 2048, 4


def transformer_params(vocab: int = VOCAB, d: int = D_MODEL, d_mlp: int = D_MLP,
                       n_blocks: int = N_BLOCKS) -> dict[str, Any]:
    def norm() -> dict[str, jax.Array]:
        return {"scale": jnp.ones(d), "bias": jnp.zeros(d)}

    def dense(m: int, n: int) -> dict[str, jax.Array]:
        return {"kernel": jnp.zeros((m, n))}

    params: dict[str, Any] = {"embed": {"embedding": jnp.zeros((vocab, d))}}
    for i in range(n_blocks):
        params[f"block_{i}"] = {
            "ln1": norm(),
            "attn": {name: dense(d, d) for name in ("query", "key", "value", "out")},
            "ln2": norm(),
            "mlp": {"up": dense(d, d_mlp), "down": dense(d_mlp, d)},
        }
    params["final_norm"] = norm()
    params["lm_head"] = dense(d, vocab)
    return params


def random_like(tree: Any, seed: int, scale: float = 1.0) -> Any:
    """A tree of Gaussian arrays shaped like ``tree`` (fixed gradients for timing)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [
        scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)])
