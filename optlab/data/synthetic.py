"""Generated tasks: no files, no network, deterministic for a given seed.

* :func:`make_logistic_regression`: the strongly convex binary logistic regression of
  Merkulov, "Modern optimization methods" (m = 200, n = 10, mu = 1), with its objective and
  exact minimizer.
* :func:`make_zipf_tagging`: token tagging with Zipf-distributed tokens, for the LSTM tagger
  (a stand-in for the CoNLL named-entity task of Kuznetsova (2023), sec. 4.3, with the
  heavy-tailed token frequencies of natural language: the lecture's explanation of why Adam
  beats SGD on language).
* :func:`make_modular_arithmetic`: ``x o y mod p`` over all pairs, for grokking
  (Power et al. 2022; Merkulov, "Stories from training neural networks" and "Modern
  optimization methods").

The works cited are listed in full in :mod:`optlab.bench.references`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optlab.data.base import Dataset, frozen, train_test_split

# ---------------------------------------------------------------------------------------------
# Strongly convex binary logistic regression (Merkulov, "Modern optimization methods").
# ---------------------------------------------------------------------------------------------


def make_logistic_regression(
    m: int = 200,
    n: int = 10,
    *,
    mu: float = 1.0,
    num_test: int = 200,
    seed: int = 0,
) -> Dataset:
    r"""Binary logistic regression data: ``m`` examples ``a_i`` in ``R^n``.

    The objective (Merkulov, "Modern optimization methods": "SGD with a constant step does not
    converge") is

    .. math::
        f(w) = \frac{\mu}{2} \|w\|_2^2
               + \frac{1}{m} \sum_{i=1}^m \log\bigl(1 + \exp(-s_i \langle a_i, w \rangle)\bigr),
        \qquad s_i = 2 y_i - 1 \in \{-1, +1\},

    ``mu``-strongly convex with an ``(mu + lambda_max(A^T A) / (4 m))``-Lipschitz gradient;
    :func:`logistic_regression_objective` computes it and :func:`solve_logistic_regression`
    its minimizer. No bias term (as in the seed). Generation: ``a_i ~ N(0, I_n)``, a planted
    ``w_true ~ N(0, I_n)``, and ``y_i ~ Bernoulli(sigmoid(<a_i, w_true>))``, so the labels are
    noisy and the classes overlap. The test set is ``num_test`` more draws from the same law.

    Args:
        m: number of training examples.
        n: number of features.
        mu: strong-convexity (L2) coefficient, stored in ``info["mu"]``.
        num_test: number of test examples.
        seed: seed of the generator.

    Returns:
        A :class:`Dataset` named ``"logistic"``: ``float32`` features ``(m, n)``, ``int32``
        labels in ``{0, 1}``, ``num_classes=2``; ``info`` holds ``mu`` and ``w_true``.
        Train it as ``LogisticRegression(n, num_classes=1, use_bias=False)`` with the loss
        above, or with two logits and softmax cross-entropy.
    """
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(n)
    a = rng.standard_normal((m + num_test, n))
    y = (rng.random(m + num_test) < 1.0 / (1.0 + np.exp(-a @ w_true))).astype(np.int32)
    a = a.astype(np.float32)
    info = {"mu": float(mu), "w_true": w_true.astype(np.float32), "seed": seed}
    return Dataset(a[:m], y[:m], a[m:], y[m:], 2, "logistic", frozen(info))


def logistic_regression_objective(
    w: jax.Array, a: jax.Array, y: jax.Array, mu: float = 1.0
) -> jax.Array:
    """The objective ``f(w) = mu/2 ||w||^2 + mean_i log(1 + exp(-s_i <a_i, w>))``, ``s = 2y - 1``.

    Args:
        w: weights ``(n,)`` (or ``(n, 1)``, the kernel of a one-logit linear layer).
        a: features ``(m, n)``.
        y: labels ``(m,)`` in ``{0, 1}``.
        mu: strong-convexity coefficient.
    """
    w = jnp.reshape(w, (-1,))
    s = 2.0 * jnp.asarray(y, a.dtype) - 1.0
    # log(1 + exp(-z)) computed stably as logaddexp(0, -z).
    return 0.5 * mu * jnp.sum(w * w) + jnp.mean(jnp.logaddexp(0.0, -s * (a @ w)))


def solve_logistic_regression(
    a: np.ndarray, y: np.ndarray, mu: float = 1.0, *, tol: float = 1e-12, max_iter: int = 100
) -> np.ndarray:
    """The exact minimizer of :func:`logistic_regression_objective` by Newton's method.

    The objective is ``mu``-strongly convex, so the minimizer is unique and Newton's method
    (float64, unit step with backtracking) converges quadratically; use ``f(w*)`` to plot
    optimality gaps ``f(w_k) - f(w*)``.

    Returns:
        ``w*`` as a float64 array ``(n,)``.
    """
    a = np.asarray(a, np.float64)
    s = 2.0 * np.asarray(y, np.float64) - 1.0
    m, n = a.shape

    def f(w: np.ndarray) -> float:
        return 0.5 * mu * w @ w + np.mean(np.logaddexp(0.0, -s * (a @ w)))

    w = np.zeros(n)
    for _ in range(max_iter):
        z = s * (a @ w)
        p = 0.5 * (1.0 - np.tanh(0.5 * z))  # sigmoid(-z), overflow-free
        grad = mu * w - a.T @ (s * p) / m
        if np.linalg.norm(grad) <= tol:
            break
        hess = mu * np.eye(n) + (a.T * (p * (1.0 - p))) @ a / m
        step = np.linalg.solve(hess, grad)
        t, f0 = 1.0, f(w)
        while f(w - t * step) > f0 - 0.25 * t * grad @ step and t > 1e-10:
            t *= 0.5
        w = w - t * step
    return w


# ---------------------------------------------------------------------------------------------
# Token tagging with Zipf-distributed tokens.
# ---------------------------------------------------------------------------------------------


def zipf_probabilities(vocab_size: int, exponent: float = 1.0) -> np.ndarray:
    """Zipf's law on ``vocab_size`` ranks: ``P(k) = (k + 1)^(-exponent) / H``, ``k = 0..V-1``."""
    w = np.arange(1, vocab_size + 1, dtype=np.float64) ** -float(exponent)
    return w / w.sum()


def make_zipf_tagging(
    num_train: int = 2000,
    num_test: int = 500,
    *,
    seq_len: int = 20,
    vocab_size: int = 500,
    num_tags: int = 5,
    exponent: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """Token tagging: sequences of Zipf-distributed tokens, a tag per token from context.

    Tokens are drawn i.i.d. from :func:`zipf_probabilities` (token id = frequency rank, so
    ``0`` is the most common). Each token id ``v`` has a fixed random class
    ``c(v) in [0, num_tags)`` (drawn once from ``seed``), and the tag of position ``t`` is

        ``tag_t = (c(x_t) + c(x_{t-1})) mod num_tags``,  with ``c(x_{-1}) = 0``,

    a deterministic function of the token and its left neighbour. So a model must learn a
    class per token (hard for rare ones: most ids appear a handful of times, the heavy tail
    that Merkulov, "Modern optimization methods" blames for SGD's trouble on language) and
    carry one step of context; a left-to-right LSTM can represent it exactly, a per-token
    classifier cannot (its best accuracy is about ``1 / num_tags`` beyond the first position).

    Args:
        num_train: number of training sequences.
        num_test: number of test sequences.
        seq_len: tokens per sequence (all sequences have this length; no padding).
        vocab_size: number of token ids.
        num_tags: number of tag classes.
        exponent: Zipf exponent (1 is natural language's).
        seed: seed of the generator.

    Returns:
        A :class:`Dataset` named ``"zipf_tagging"``: ``int32`` tokens ``(N, seq_len)``, ``int32``
        tags ``(N, seq_len)``, ``num_classes=num_tags``; ``info`` holds ``vocab_size``,
        ``seq_len``, ``exponent``, ``token_class`` (the map ``c``) and ``token_probs``.
    """
    if vocab_size < 1 or num_tags < 1 or seq_len < 1:
        raise ValueError("vocab_size, num_tags and seq_len must be positive")
    rng = np.random.default_rng(seed)
    probs = zipf_probabilities(vocab_size, exponent)
    token_class = rng.integers(0, num_tags, size=vocab_size).astype(np.int32)
    tokens = rng.choice(vocab_size, size=(num_train + num_test, seq_len), p=probs)
    tokens = tokens.astype(np.int32)
    cls = token_class[tokens]
    prev = np.concatenate([np.zeros_like(cls[:, :1]), cls[:, :-1]], axis=1)
    tags = ((cls + prev) % num_tags).astype(np.int32)
    info = {
        "vocab_size": vocab_size,
        "seq_len": seq_len,
        "exponent": float(exponent),
        "token_class": token_class,
        "token_probs": probs,
        "seed": seed,
    }
    return Dataset(
        tokens[:num_train],
        tags[:num_train],
        tokens[num_train:],
        tags[num_train:],
        num_tags,
        "zipf_tagging",
        frozen(info),
    )


# ---------------------------------------------------------------------------------------------
# Modular arithmetic (grokking).
# ---------------------------------------------------------------------------------------------

MODULAR_OPS: tuple[str, ...] = ("+", "-", "*", "/")
"""Operations :func:`make_modular_arithmetic` knows: ``x + y``, ``x - y``, ``x * y`` and
``x / y = x * y^(-1)`` (mod p)."""


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def _apply(op: str, x: np.ndarray, y: np.ndarray, p: int) -> np.ndarray:
    if op == "+":
        return (x + y) % p
    if op == "-":
        return (x - y) % p
    if op == "*":
        return (x * y) % p
    # Division: multiply by the inverse y^(p-2) (Fermat's little theorem; p is prime).
    inv = np.array([pow(int(v), p - 2, p) for v in range(p)], dtype=np.int64)
    return (x * inv[y]) % p


def make_modular_arithmetic(
    p: int = 97,
    ops: str | Sequence[str] = "/",
    *,
    train_fraction: float = 0.5,
    seed: int = 0,
) -> Dataset:
    """All equations ``x o y = z (mod p)`` as token sequences, split at random for grokking.

    Power et al. (2022) train a small Transformer on a fraction of the table of a binary
    operation and watch validation accuracy jump long after training accuracy saturates;
    Power et al. use division mod 97; Merkulov's "Stories from training neural networks" and
    "Modern optimization methods" show grokking on modular division (the latter training on
    half the table).

    Tokens: ``0..p-1`` are the numbers, ``p + i`` is ``ops[i]``, ``p + len(ops)`` is ``=``.
    An example is ``[x, op, y, =]`` with label ``z`` (itself a number token, so the logits
    over the whole vocabulary at the last position can be trained with cross-entropy
    directly). All pairs ``x, y in [0, p)`` are listed for each op, except ``y = 0`` for
    ``/``.

    Args:
        p: the modulus; must be prime when ``"/"`` is among the ops.
        ops: one op or several, from :data:`MODULAR_OPS`.
        train_fraction: share of all equations used for training (the rest is the test set).
        seed: seed of the random split.

    Returns:
        A :class:`Dataset` named ``"modular"``: ``int32`` sequences ``(N, 4)``, ``int32``
        answers ``(N,)``, ``num_classes=p``; ``info`` holds ``p``, ``ops``, ``vocab_size``,
        ``op_tokens`` (op -> token) and ``eq_token``.
    """
    ops = (ops,) if isinstance(ops, str) else tuple(ops)
    if not ops:
        raise ValueError("ops must name at least one operation")
    unknown = [op for op in ops if op not in MODULAR_OPS]
    if unknown:
        raise ValueError(f"unknown ops {unknown}; known: {list(MODULAR_OPS)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"ops repeat: {list(ops)}")
    if p < 2:
        raise ValueError(f"p must be at least 2, got {p}")
    if "/" in ops and not _is_prime(p):
        raise ValueError(f"division mod p needs a prime p, got {p}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")

    eq_token = p + len(ops)
    seqs, answers = [], []
    for i, op in enumerate(ops):
        x, y = np.meshgrid(np.arange(p), np.arange(1 if op == "/" else 0, p), indexing="ij")
        x, y = x.ravel(), y.ravel()
        seqs.append(np.stack([x, np.full_like(x, p + i), y, np.full_like(x, eq_token)], 1))
        answers.append(_apply(op, x, y, p))
    seq = np.concatenate(seqs).astype(np.int32)
    ans = np.concatenate(answers).astype(np.int32)
    x_tr, y_tr, x_te, y_te = train_test_split(
        seq, ans, 1.0 - train_fraction, seed=seed, stratify=False
    )
    info = {
        "p": p,
        "ops": ops,
        "vocab_size": p + len(ops) + 1,
        "op_tokens": {op: p + i for i, op in enumerate(ops)},
        "eq_token": eq_token,
        "train_fraction": float(train_fraction),
        "seed": seed,
    }
    return Dataset(x_tr, y_tr, x_te, y_te, p, "modular", frozen(info))
