"""Parameter sets shared by the benchmark scripts (no optlab import).

``transformer_params``: the transformer-shaped set that the Muon and Shampoo benchmarks time
(issue 4 / 5): vocabulary 8192, d_model 512, 4 blocks each with separate 512 x 512 attention
projections ``query``/``key``/``value``/``out``, an MLP ``up`` 512 x 2048 and ``down``
2048 x 512 and two LayerNorms; an untied 8192 x 512 embedding, a final LayerNorm and a 512 x 8192
``lm_head`` (21.2 M float32 parameters). Names follow Flax (``embedding``, ``kernel``,
``scale``, ``bias``) so that path-based routing (``optlab.muon_labels``) sees what it would see
in a real model.

``transformer_gradients``: real gradients for that set: a causal pre-LayerNorm transformer
(8 heads, GELU MLP, sinusoidal positions) written directly over the parameter dict, initialized
like Flax's defaults (LeCun-normal kernels, N(0, 1) / sqrt(d) embeddings), evaluated on
Zipf-distributed token batches (the marginal of natural text). Their statistics are what an
optimizer sees in training: embedding and head gradients touch only the batch's tokens, so the
Shampoo factors are far from the well-conditioned Wishart matrices that Gaussian gradients give.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

VOCAB, D_MODEL, D_MLP, N_BLOCKS = 8192, 512, 2048, 4


def transformer_params(
    vocab: int = VOCAB, d: int = D_MODEL, d_mlp: int = D_MLP, n_blocks: int = N_BLOCKS
) -> dict[str, Any]:
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


def init_transformer(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Random initial values for ``transformer_params`` (Flax default initializers)."""
    leaves, treedef = jax.tree.flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for (path, x), key in zip(leaves, keys, strict=True):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            out.append(jnp.ones_like(x))
        elif "bias" in name:
            out.append(jnp.zeros_like(x))
        elif "embedding" in name:
            out.append(jax.random.normal(key, x.shape) / jnp.sqrt(x.shape[-1]))
        else:
            out.append(jax.random.normal(key, x.shape) / jnp.sqrt(x.shape[0]))
    return jax.tree.unflatten(treedef, out)


def _layer_norm(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-6) * p["scale"] + p["bias"]


def transformer_loss(params: dict[str, Any], tokens: jax.Array, n_heads: int = 8) -> jax.Array:
    """Next-token cross-entropy of the transformer over ``tokens`` ([batch, length + 1])."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    x = params["embed"]["embedding"][inputs]
    b, t, d = x.shape
    pos = jnp.arange(t)[:, None] / (10000.0 ** (jnp.arange(0, d, 2)[None, :] / d))
    x = x + jnp.concatenate([jnp.sin(pos), jnp.cos(pos)], axis=-1)
    causal = jnp.tril(jnp.ones((t, t), bool))
    n_blocks = sum(1 for k in params if k.startswith("block_"))
    for i in range(n_blocks):
        blk = params[f"block_{i}"]
        h = _layer_norm(x, blk["ln1"])
        q, k, v = (
            jnp.dot(h, blk["attn"][n]["kernel"]).reshape(b, t, n_heads, d // n_heads)
            for n in ("query", "key", "value")
        )
        logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(d // n_heads)
        weights = jax.nn.softmax(jnp.where(causal, logits, -1e30), axis=-1)
        o = jnp.einsum("bhqk,bkhc->bqhc", weights, v).reshape(b, t, d)
        x = x + jnp.dot(o, blk["attn"]["out"]["kernel"])
        h = _layer_norm(x, blk["ln2"])
        x = x + jnp.dot(
            jax.nn.gelu(jnp.dot(h, blk["mlp"]["up"]["kernel"])), blk["mlp"]["down"]["kernel"]
        )
    x = _layer_norm(x, params["final_norm"])
    logits = jnp.dot(x, params["lm_head"]["kernel"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))


def transformer_gradients(
    params: dict[str, Any], count: int, seed: int, batch: int = 8, length: int = 128
) -> list[dict[str, Any]]:
    """``count`` gradients of ``transformer_loss`` at one random initialization, each on its
    own batch of Zipf(1.1)-distributed tokens (ranks shuffled over the vocabulary)."""
    vocab = params["embed"]["embedding"].shape[0]
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1) ** 1.1
    token_of_rank = rng.permutation(vocab)
    values = init_transformer(params, seed)
    grad = jax.jit(jax.grad(transformer_loss))
    out = []
    for _ in range(count):
        ranks = rng.choice(vocab, size=(batch, length + 1), p=weights / weights.sum())
        out.append(grad(values, jnp.asarray(token_of_rank[ranks])))
    return out


def random_like(tree: Any, seed: int, scale: float = 1.0) -> Any:
    """A tree of Gaussian arrays shaped like ``tree`` (fixed gradients for timing)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
    )
