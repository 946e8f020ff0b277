"""A small decoder-only Transformer (GPT-style, pre-LayerNorm).

Vaswani et al. (2017), "Attention is all you need"; Radford et al. (2019), GPT-2 (pre-LN,
learned positions); Power et al. (2022), "Grokking" (a 2-layer decoder, width 128, 4 heads,
which are this module's defaults). Layers:

* ``embed`` (tokens) + ``pos_embed`` (learned positions), both ``nnx.Embed``;
* ``blocks``: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``, with causal self-attention whose
  ``query``, ``key``, ``value`` and ``out`` projections are separate ``d_model x d_model``
  dense layers (so matrix optimizers see one 2D matrix per projection, not a fused or 3D
  kernel), and an MLP ``fc`` (``d_model -> mlp_ratio * d_model``, GELU) -> ``proj``;
* ``ln_f`` (final LayerNorm), then ``lm_head`` (dense, no bias, untied from ``embed``).

With the defaults there are ``12 d^2 + 13 d`` parameters per block (396,544 in the two blocks
for ``d = 128``: the "about 4e5 non-embedding parameters" of the 2-layer, width-128,
4-head Transformer trained on modular division in Merkulov, "Modern optimization methods").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# GPT-2's initialization scale for embeddings and projections.
_init = nnx.initializers.normal(0.02)


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention with separate 2D ``query/key/value/out`` kernels."""

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nnx.Linear(d_model, d_model, kernel_init=_init, rngs=rngs)
        self.key = nnx.Linear(d_model, d_model, kernel_init=_init, rngs=rngs)
        self.value = nnx.Linear(d_model, d_model, kernel_init=_init, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, kernel_init=_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        heads = lambda y: jnp.reshape(y, (b, t, self.num_heads, d // self.num_heads))  # noqa: E731
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.out(jnp.reshape(y, (b, t, d)))


class TransformerBlock(nnx.Module):
    """Pre-LN decoder block: ``x + attn(ln1(x))``, then ``x + proj(gelu(fc(ln2(x))))``."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 4, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
        self.attn = CausalSelfAttention(d_model, num_heads, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
        self.fc = nnx.Linear(d_model, mlp_ratio * d_model, kernel_init=_init, rngs=rngs)
        self.proj = nnx.Linear(mlp_ratio * d_model, d_model, kernel_init=_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.proj(jax.nn.gelu(self.fc(self.ln2(x))))


class Transformer(nnx.Module):
    """Decoder-only Transformer: ``(B, T)`` tokens to ``(B, T, num_outputs)`` logits.

    Position ``t`` sees tokens ``0..t`` only (causal mask), so the logits at ``t`` predict
    token ``t + 1`` for language modelling, and the logits at the last position answer a
    prompt such as ``[x, op, y, =]`` (grokking).

    Args:
        vocab_size: number of token ids.
        d_model: width of the residual stream.
        num_heads: attention heads (must divide ``d_model``).
        num_layers: number of decoder blocks.
        max_len: longest sequence; size of the positional embedding table.
        mlp_ratio: hidden width of each MLP as a multiple of ``d_model``.
        num_outputs: logits per position; defaults to ``vocab_size``.
        rngs: random streams for initialization.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        d_model: int = 128,
        num_heads: int = 4,
        num_layers: int = 2,
        max_len: int = 64,
        mlp_ratio: int = 4,
        num_outputs: int | None = None,
        rngs: nnx.Rngs,
    ):
        self.max_len = max_len
        self.embed = nnx.Embed(vocab_size, d_model, embedding_init=_init, rngs=rngs)
        self.pos_embed = nnx.Embed(max_len, d_model, embedding_init=_init, rngs=rngs)
        self.blocks = nnx.List(
            [TransformerBlock(d_model, num_heads, mlp_ratio, rngs=rngs) for _ in range(num_layers)]
        )
        self.ln_f = nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)
        self.lm_head = nnx.Linear(
            d_model, num_outputs or vocab_size, use_bias=False, kernel_init=_init, rngs=rngs
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Logits ``(B, T, num_outputs)`` for integer tokens ``(B, T)``, ``T <= max_len``."""
        t = tokens.shape[-1]
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len={self.max_len}")
        x = self.embed(tokens) + self.pos_embed(jnp.arange(t))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))
