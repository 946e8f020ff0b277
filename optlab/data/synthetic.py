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
# Synthetic named-entity tagging (context, rare and unseen tokens, label noise).
# ---------------------------------------------------------------------------------------------

ENTITY_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG")
"""Entity types of :func:`make_entity_tagging` (CoNLL-2003's, less MISC)."""

ENTITY_TAGS: tuple[str, ...] = ("O",) + tuple(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I"))
"""Its tags, BIO (IOB2) scheme: tag id ``i`` is ``ENTITY_TAGS[i]``."""

UNK = 0
"""Token id of every token rarer than ``min_count`` in the training split (and unseen ones)."""


def make_entity_tagging(
    num_train: int = 2000,
    num_test: int = 500,
    *,
    seq_len: int = 24,
    num_words: int = 500,
    num_names: int = 1000,
    num_continuations: int = 20,
    entity_prob: float = 0.3,
    trigger_prob: float = 0.5,
    ambiguous_fraction: float = 0.25,
    label_noise: float = 0.05,
    min_count: int = 2,
    seed: int = 0,
) -> Dataset:
    r"""A synthetic named-entity tagging task that needs an LSTM's memory and does not saturate.

    Sentences mimic CoNLL-2003 (Tjong Kim Sang and De Meulder 2003) in miniature. Each sentence
    of ``seq_len`` tokens starts with a *topic* token (one of 3), then a chain of chunks: with
    probability ``entity_prob`` an entity, else an ordinary word (one of ``num_words``, Zipf
    distributed, tag ``O``). An entity is

    * with probability ``trigger_prob``, a *trigger* word of its type first (two per type, like
      "Mr." or "in"; tag ``O``),
    * a *name* (one of ``num_names``, Zipf distributed, so most names are rare), tag ``B-T``,
    * 0, 1 or 2 *continuation* tokens (a pool of ``num_continuations`` shared by all types,
      like "Jr." or "Corp."), tag ``I-T``.

    The type ``T`` of a name is fixed (drawn once), except for an ``ambiguous_fraction`` of
    names whose type is ``(base(name) + topic) mod 3``: it depends on the sentence's first
    token, up to ``seq_len - 1`` positions back. A continuation's tag repeats the type of its
    span's name, 1 or 2 positions back. So a left-to-right tagger has to carry context (the
    topic, the current span's type) in its state; a per-token classifier cannot tag
    continuations or ambiguous names.

    Vocabulary from the training split, as for real data: any token seen fewer than
    ``min_count`` times there (in particular every name that only the test split contains)
    becomes :data:`UNK` in both splits. Unknown names can then be tagged only from a trigger;
    without one, an unknown token may be a rare word or a rare name of any type, which caps
    the achievable accuracy below 1.

    Label noise: each tag (both splits, as annotation errors would be) is replaced with
    probability ``label_noise`` by a tag drawn uniformly from :data:`ENTITY_TAGS`, so even the
    generating rule scores only about ``1 - label_noise (1 - 1/7)`` on the test split
    (``info["rule_test_acc"]`` is the exact value on this draw).

    Args:
        num_train: number of training sentences.
        num_test: number of test sentences.
        seq_len: tokens per sentence (all sentences have this length; no padding).
        num_words: ordinary words (Zipf exponent 1).
        num_names: entity names (Zipf exponent 1).
        num_continuations: continuation tokens.
        entity_prob: probability that a chunk is an entity.
        trigger_prob: probability that an entity is preceded by a trigger of its type.
        ambiguous_fraction: share of names whose type depends on the topic.
        label_noise: probability that a tag is replaced by a uniformly drawn one.
        min_count: tokens seen fewer times in the training split become :data:`UNK`.
        seed: seed of the generator.

    Returns:
        A :class:`Dataset` named ``"entity_tagging"``: ``int32`` tokens ``(N, seq_len)``,
        ``int32`` tags ``(N, seq_len)`` (ids into :data:`ENTITY_TAGS`), ``num_classes=7``;
        ``info`` holds ``vocab_size``, ``seq_len``, ``tags``, ``clean_test_tags`` (the tags
        before noise), ``unk_test_fraction`` (share of test tokens that are :data:`UNK`),
        ``rule_test_acc`` (accuracy of the noise-free tags on the noisy test tags), and the
        rule itself: ``first_id`` (the first id of topics, triggers, continuations, words and
        names; trigger ``first_id["trigger"] + 2 t + j`` announces type ``t``), ``name_type``
        and ``name_ambiguous``.

    Example::

        ds = make_entity_tagging(seed=0)
        model = LSTMTagger(ds.info["vocab_size"], ds.num_classes, rngs=nnx.Rngs(0))
    """
    if min(num_train, num_test, seq_len, num_words, num_names, num_continuations) < 1:
        raise ValueError(
            "num_train, num_test, seq_len, num_words, num_names and num_continuations must be "
            "positive integers"
        )
    for name, p in (
        ("entity_prob", entity_prob),
        ("trigger_prob", trigger_prob),
        ("ambiguous_fraction", ambiguous_fraction),
        ("label_noise", label_noise),
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count}")
    n_types = len(ENTITY_TYPES)
    # Token ids: UNK, topics, triggers (two per type), continuations, words, names.
    topic0 = 1
    trigger0 = topic0 + n_types
    cont0 = trigger0 + 2 * n_types
    word0 = cont0 + num_continuations
    name0 = word0 + num_words
    vocab_size = name0 + num_names

    rng = np.random.default_rng(seed)
    name_type = rng.integers(0, n_types, size=num_names)
    ambiguous = rng.random(num_names) < ambiguous_fraction
    word_p = zipf_probabilities(num_words)
    name_p = zipf_probabilities(num_names)
    n = num_train + num_test
    tokens = np.empty((n, seq_len), np.int64)
    tags = np.empty((n, seq_len), np.int64)
    for i in range(n):
        topic = int(rng.integers(n_types))
        toks, tgs = [topic0 + topic], [0]
        while len(toks) < seq_len:
            if rng.random() >= entity_prob:
                toks.append(word0 + int(rng.choice(num_words, p=word_p)))
                tgs.append(0)
                continue
            name = int(rng.choice(num_names, p=name_p))
            t = int((name_type[name] + topic) % n_types if ambiguous[name] else name_type[name])
            if rng.random() < trigger_prob:
                toks.append(trigger0 + 2 * t + int(rng.integers(2)))
                tgs.append(0)
            toks.append(name0 + name)
            tgs.append(1 + 2 * t)  # B-T
            for _ in range(int(rng.integers(3))):
                toks.append(cont0 + int(rng.integers(num_continuations)))
                tgs.append(2 + 2 * t)  # I-T
        tokens[i], tags[i] = toks[:seq_len], tgs[:seq_len]

    # Vocabulary from the training split: rarer tokens (and unseen ones) become UNK.
    counts = np.bincount(tokens[:num_train].ravel(), minlength=vocab_size)
    tokens = np.where(counts[tokens] >= min_count, tokens, UNK).astype(np.int32)
    clean = tags.astype(np.int32)
    noisy = rng.random(clean.shape) < label_noise
    tags = np.where(noisy, rng.integers(0, len(ENTITY_TAGS), clean.shape), clean)
    tags = tags.astype(np.int32)
    info = {
        "vocab_size": vocab_size,
        "seq_len": seq_len,
        "tags": ENTITY_TAGS,
        "clean_test_tags": clean[num_train:],
        "unk_test_fraction": float(np.mean(tokens[num_train:] == UNK)),
        "rule_test_acc": float(np.mean(clean[num_train:] == tags[num_train:])),
        "label_noise": float(label_noise),
        # How the ids are laid out, and the names' types: the rule, for tests and analysis.
        "first_id": {
            "topic": topic0,
            "trigger": trigger0,
            "continuation": cont0,
            "word": word0,
            "name": name0,
        },
        "name_type": name_type.astype(np.int32),
        "name_ambiguous": ambiguous,
        "seed": seed,
    }
    return Dataset(
        tokens[:num_train],
        tags[:num_train],
        tokens[num_train:],
        tags[num_train:],
        len(ENTITY_TAGS),
        "entity_tagging",
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
