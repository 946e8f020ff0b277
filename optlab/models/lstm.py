"""An LSTM sequence tagger: one label per token.

Hochreiter and Schmidhuber (1997), "Long short-term memory"; Kuznetsova (2023) sec. 4.3
(named-entity tagging on CoNLL with an LSTM layer and a dense layer, tanh in the recurrent
layer, sec. 1.5).
Layers: ``embed`` (``nnx.Embed``) -> ``rnn`` (``nnx.RNN`` over ``nnx.OptimizedLSTMCell``,
or ``nnx.Bidirectional`` of two) -> ``head`` (dense, applied to every position).
"""

from __future__ import annotations

import jax
from flax import nnx


class LSTMTagger(nnx.Module):
    """Token tagger: ``(B, T)`` integer tokens to ``(B, T, num_tags)`` logits.

    Args:
        vocab_size: number of token ids.
        num_tags: number of output classes per token.
        embed_dim: embedding width.
        hidden_size: LSTM state width (per direction).
        bidirectional: run a second LSTM right-to-left and concatenate the two states,
          so each tag can depend on the whole sentence (the usual choice for NER). The
          default reads left to right only, which suffices for tags that depend on the
          current and earlier tokens.
        rngs: random streams for initialization.
    """

    def __init__(
        self,
        vocab_size: int,
        num_tags: int,
        *,
        embed_dim: int = 64,
        hidden_size: int = 128,
        bidirectional: bool = False,
        rngs: nnx.Rngs,
    ):
        self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)

        def lstm(reverse: bool = False) -> nnx.RNN:
            cell = nnx.OptimizedLSTMCell(embed_dim, hidden_size, rngs=rngs)
            return nnx.RNN(cell, reverse=reverse, keep_order=True)

        if bidirectional:
            self.rnn = nnx.Bidirectional(lstm(), lstm(reverse=True))
            out = 2 * hidden_size
        else:
            self.rnn = lstm()
            out = hidden_size
        self.head = nnx.Linear(out, num_tags, rngs=rngs)

    def __call__(self, tokens: jax.Array, seq_lengths: jax.Array | None = None) -> jax.Array:
        """Per-token logits ``(B, T, num_tags)``.

        Args:
            tokens: integer token ids ``(B, T)``.
            seq_lengths: optional true lengths ``(B,)`` of right-padded sequences; the LSTM
              state stops updating past each length (outputs there are not meaningful and
              should be masked out of the loss).
        """
        h = self.embed(tokens)
        h = self.rnn(h, seq_lengths=seq_lengths)
        return self.head(h)
