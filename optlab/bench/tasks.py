"""Benchmark tasks: a data set, a model, a loss and an accuracy, with default budgets.

A :class:`Task` is what ``optlab compare --task NAME`` trains. Every task is fixed: its data
(split seed 0) does not depend on ``--seed``, which only changes the initialization and the
batch order, so runs with different seeds are repeated trials of one workload (as in
AlgoPerf).

=======================  ===============================================  ======  =====  ======
task                     data + model                                     epochs  batch  target
=======================  ===============================================  ======  =====  ======
``digits-lenet5``        sklearn digits at 32x32 + LeNet-5 (the default)  12      100    0.95
``digits-mlp``           sklearn digits 8x8 + MLP (128, 128)              20      64     0.95
``logistic``             strongly convex logistic regression, m=200 (*)   20      20     0.77
``entity-lstm`` (**)     synthetic entity tagging + LSTM tagger           10      50     0.90
``modular-transformer``  x + y mod 97 (half for training) + Transformer   50      256    0.90
``mnist-lenet5``         MNIST (IDX files in ``--data-dir``) + LeNet-5    20      100    0.985
``cifar10-resnet18``     CIFAR-10 (binary, ``--data-dir``) + ResNet-18    20      100    0.75
``conll-lstm``           CoNLL-2003 NER (``--data-dir``) + LSTM tagger    20      2      0.91
``stdlib-lm``            stdlib sources, next byte + Transformer (***)    1       32     0.50
``text-lm``              your text file (``--data-dir``), as stdlib-lm    1       32     0.50
=======================  ===============================================  ======  =====  ======

(*) The logistic regression of Merkulov, "Modern optimization methods" (n=10, mu=1).

(**) :func:`optlab.data.make_entity_tagging`: BIO tags whose type depends on the sentence's
first token or on the span's first token, Zipf-distributed names (most rare; those seen once
in training, and those only the test split has, become one unknown token), triggers that
announce an entity's type, and 5% label noise in both splits. The noise-free tags score 0.956
on the noisy test tags; a tuned Adam ends near 0.91. It replaced ``zipf-lstm`` (tags
``(c(x_t) + c(x_{t-1})) mod 5`` of Zipf tokens), on which every registered optimizer reached
test accuracy 1.0; the old name still runs it (:data:`TASK_ALIASES`). Final test accuracy
over seeds 0, 1, 2 with the registry's defaults (``optlab compare --task entity-lstm --seed S
--optimizers O``; seed 0 is the sweep's own run, which a rerun reproduces exactly), mean and
range: sam 0.9201 (0.0092), shampoo 0.9160 (0.0075), momentum 0.9116 (0.0031), sgd 0.9098
(0.0028), adamw 0.9088 (0.0013), adam 0.9088 (0.0016), lion 0.9078 (0.0032), muon 0.9059
(0.0055; on seed 0 it peaks at 0.918, then fits the noisy labels down to a training loss of
0.05); soap and kfac not yet tuned there. SAM's lead over the last (0.0142) is 1.5x its
own range and 3x its standard deviation (0.0047).
``conll-lstm`` is Kuznetsova (2023) sec. 4.3: CoNLL-2003's English files
(:func:`optlab.data.load_conll2003`), 20 epochs of 2-sentence batches, the thesis's
time-to-accuracy target 0.91, accuracy per token (padding masked,
:func:`masked_tagging_metrics`).

(***) :func:`optlab.data.load_text`: byte tokens of 79 standard-library modules in a fixed
order, 7 of them held out for testing (the same split on every machine with the same Python
minor release), 64-byte windows, next-byte cross-entropy and accuracy per byte; a 2-layer,
width-64 :class:`optlab.models.Transformer` (causal). ``text-lm`` is the same on a file the user
brings. ``optlab lab clarifying-shampoo`` runs the token-efficiency study on the same data.

The MNIST and CIFAR-10 budgets and targets are those of Kuznetsova (2023) (sec. 4.1, 4.2: 20
epochs, batch 100, targets 0.985 and 0.75). The offline tasks' budgets are sized for a 2-core
CPU, and their targets sit a little below what the better-tuned methods reach in that budget,
so that time-to-target separates the methods (see :mod:`optlab.bench.registry` for how the
defaults were measured). The logistic task's target is just below the test accuracy of the
exact minimizer w* (0.772); since accuracy depends only on the direction of w, every method
gets there within a few steps (it is evaluated every step), and its objective is better read
from the training-loss curve (the lecture's point: SGD with a constant step stalls at a noise
floor).

Time to target (:attr:`Task.profile_by`). AlgoPerf, and ``optlab compare`` by default, measure
a method by the training seconds until it reaches the target. On the two smallest tasks those
seconds measure timer resolution, dispatch overhead and whatever else the machine is doing,
not the optimizer, so they are *profiled by steps*: their performance-profile ratios
(:mod:`optlab.bench.profiles`) compare steps to target, and their tables say so. Steps ignore
what a step costs (SAM's is two gradients), which on tasks this small is mostly dispatch
overhead anyway. The rule: a task is profiled by steps when the time-to-target ratios of
repeated identical runs vary about as much as the methods differ. Three identical runs of
``optlab compare --task T --quiet --optimizers ...`` (seed 0, the default budget, this
project's 2-core CPU shared with other jobs) gave:

=============  ===============================================  ==========================
task           seconds to target over the 3 runs                steps to target
=============  ===============================================  ==========================
logistic       sgd 0.0007 / 0.0009 / 0.0040, adam 0.0007 (x3)   6, 6 (identical each run)
digits-mlp     sgd 0.089 / 0.154 / 0.085, adam 0.061 / 0.039 /  220, 88 (identical)
               0.051: sgd / fastest 2.0, 4.0, 2.0
zipf-lstm      sgd 2.03 / 1.99 / 1.88, adam 0.42 / 0.51 / 0.52  160, 40 (identical)
=============  ===============================================  ==========================

``logistic`` (a whole run takes ~50 ms, the target falls within the first ~1 ms) and
``digits-mlp`` (~0.05 s to target; the same run's ratio to the fastest moved from 2 to 4)
are profiled by steps; ``zipf-lstm`` (spread ~10%; its replacement ``entity-lstm`` has the
same model, batch and budget and takes longer to its target) and the larger tasks keep
seconds.

The works cited are listed in full in :mod:`optlab.bench.references`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from optlab import data as data_lib
from optlab import models
from optlab.bench.references import KUZNETSOVA_2023, MERKULOV_MODERN

_THESIS = KUZNETSOVA_2023.short

PROFILE_MEASURES = ("seconds", "steps")
"""The values of :attr:`Task.profile_by`."""

#: Per-example loss and correctness ``(B,)`` each, from a model and a batch.
MetricsFn = Callable[[nnx.Module, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Task:
    """One workload of ``optlab compare``.

    Attributes:
        name: the ``--task`` name.
        description: one line for tables and ``--list``.
        load: ``(data_dir) -> Dataset``; ``data_dir`` is ``None`` for offline tasks.
        make_model: ``(dataset, rngs) -> nnx.Module`` returning logits.
        metrics: ``(model, x, y) -> (loss, correct)``, both per example ``(B,)`` (per-token
            tasks average over the tokens of each sequence). Training minimizes the mean loss
            plus :attr:`penalty`; test accuracy is the mean of ``correct``.
        epochs: default number of passes over the training set.
        batch_size: default minibatch size.
        target: default test-accuracy target for steps / seconds to target.
        needs_data_dir: the data is read from ``--data-dir`` (never downloaded).
        penalty: optional ``model -> scalar`` added to the training loss (not to the test
            loss), e.g. the strongly convex logistic regression's ``mu/2 ||w||^2``.
        eval_every: evaluate every this many steps; ``None``: once per epoch. Small tasks
            whose target is met within an epoch need finer steps-to-target.
        profile_by: what "time to target" means for this task in the performance profiles
            and scores: ``"seconds"`` (training clock, the default, as AlgoPerf) or
            ``"steps"`` (for tasks so small that their seconds measure timer noise; see the
            module docstring).
        example_weight: optional ``(x, y) -> (B,)`` weights of the examples in the training
            loss and the test means, e.g. the real tokens of each padded sentence
            (:func:`padded_tag_count`), so that the loss and accuracy are per token; ``None``:
            every example counts the same.
    """

    name: str
    description: str
    load: Callable[[str | os.PathLike | None], data_lib.Dataset]
    make_model: Callable[[data_lib.Dataset, nnx.Rngs], nnx.Module]
    metrics: MetricsFn
    epochs: int
    batch_size: int
    target: float
    needs_data_dir: bool = False
    penalty: Callable[[nnx.Module], jax.Array] | None = None
    eval_every: int | None = None
    profile_by: Literal["seconds", "steps"] = "seconds"
    example_weight: Callable[[jax.Array, jax.Array], jax.Array] | None = None

    def __post_init__(self) -> None:
        if self.profile_by not in PROFILE_MEASURES:
            raise ValueError(
                f"Task {self.name!r}: profile_by must be one of {PROFILE_MEASURES}, "
                f"got {self.profile_by!r}"
            )
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(
                f"Task {self.name!r}: eval_every must be None or >= 1, got {self.eval_every}"
            )


# -- losses ------------------------------------------------------------------------------------


def classification_metrics(model: nnx.Module, x: jax.Array, y: jax.Array):
    """Softmax cross-entropy and top-1 correctness for ``(B, classes)`` logits."""
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return loss, (jnp.argmax(logits, -1) == y).astype(jnp.float32)


def tagging_metrics(model: nnx.Module, x: jax.Array, y: jax.Array):
    """Per-token cross-entropy and accuracy for ``(B, T, tags)`` logits, averaged over ``T``."""
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(-1)
    return loss, (jnp.argmax(logits, -1) == y).astype(jnp.float32).mean(-1)


def masked_tagging_metrics(model: nnx.Module, x: jax.Array, y: jax.Array):
    """Per-token cross-entropy and accuracy averaged over each sentence's real tokens.

    For right-padded ``(B, T)`` sentences whose padding tags are negative
    (:data:`optlab.data.conll.IGNORE_TAG`); with :func:`padded_tag_count` as the task's
    :attr:`Task.example_weight`, the means are over tokens. A left-to-right LSTM's outputs at
    real positions do not depend on the padding after them, so the model needs no lengths.
    """
    logits = model(x)
    mask = (y >= 0).astype(logits.dtype)
    safe = jnp.maximum(y, 0)
    n = jnp.maximum(mask.sum(-1), 1.0)
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, safe) * mask).sum(-1) / n
    correct = ((jnp.argmax(logits, -1) == safe) * mask).sum(-1) / n
    return loss, correct


def padded_tag_count(x: jax.Array, y: jax.Array) -> jax.Array:
    """Real tokens per right-padded sentence (tags ``>= 0``), as float ``(B,)`` weights."""
    del x
    return (y >= 0).sum(-1).astype(jnp.float32)


def last_token_metrics(model: nnx.Module, x: jax.Array, y: jax.Array):
    """Cross-entropy and correctness of the logits at the last position (``[x, op, y, =]``)."""
    logits = model(x)[:, -1, :]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return loss, (jnp.argmax(logits, -1) == y).astype(jnp.float32)


def logistic_metrics(model: nnx.Module, x: jax.Array, y: jax.Array):
    """Binary logistic loss ``log(1 + exp(-s <a, w>))``, ``s = 2y - 1``.

    As in Merkulov, "Modern optimization methods" (the strongly convex logistic regression).
    """
    z = model(x)[:, 0]
    s = 2.0 * y.astype(z.dtype) - 1.0
    return jnp.logaddexp(0.0, -s * z), ((z > 0) == (y == 1)).astype(jnp.float32)


def _logistic_penalty(mu: float) -> Callable[[nnx.Module], jax.Array]:
    def penalty(model: nnx.Module) -> jax.Array:
        w = model.head.kernel[...]
        return 0.5 * mu * jnp.sum(w * w)

    return penalty


# -- tasks -------------------------------------------------------------------------------------


def _flat_features(ds: data_lib.Dataset) -> int:
    n = 1
    for d in ds.input_shape:
        n *= d
    return n


def _mnist(data_dir: str | os.PathLike | None) -> data_lib.Dataset:
    return data_lib.load_mnist(data_dir, pad_to_32=True)


def _cifar10(data_dir: str | os.PathLike | None) -> data_lib.Dataset:
    return data_lib.standardize(data_lib.load_cifar10(data_dir), per_channel=True)


def _conll(data_dir: str | os.PathLike | None) -> data_lib.Dataset:
    return data_lib.load_conll2003(data_dir)


def _modular(data_dir: str | os.PathLike | None) -> data_lib.Dataset:
    del data_dir
    return data_lib.make_modular_arithmetic(97, "+", train_fraction=0.5, seed=0)


_LOGISTIC_MU = 1.0  # as in Merkulov, "Modern optimization methods"

_TASK_LIST = [
    Task(
        name="digits-lenet5",
        description="LeNet-5 on scikit-learn's digits resized to 32x32 (offline)",
        load=lambda d: data_lib.load_digits32(seed=0),
        make_model=lambda ds, rngs: models.LeNet5(ds.num_classes, rngs=rngs),
        metrics=classification_metrics,
        epochs=12,
        batch_size=100,
        target=0.95,
    ),
    Task(
        name="digits-mlp",
        description="MLP (128, 128) on scikit-learn's 8x8 digits (offline)",
        load=lambda d: data_lib.load_digits(seed=0),
        make_model=lambda ds, rngs: models.MLP(_flat_features(ds), ds.num_classes, rngs=rngs),
        metrics=classification_metrics,
        epochs=20,
        batch_size=64,
        target=0.95,
        # ~0.05 s to target: the seconds of identical runs differ by up to 2x (module docstring).
        profile_by="steps",
    ),
    Task(
        name="logistic",
        description=(
            f"strongly convex logistic regression, m=200, n=10, mu=1 ({MERKULOV_MODERN.short})"
        ),
        # 2000 test draws (not 200): accuracy differences of 1% are then above the noise.
        load=lambda d: data_lib.make_logistic_regression(
            200, 10, mu=_LOGISTIC_MU, num_test=2000, seed=0
        ),
        make_model=lambda ds, rngs: models.LogisticRegression(
            _flat_features(ds), 1, use_bias=False, rngs=rngs
        ),
        metrics=logistic_metrics,
        epochs=20,
        batch_size=20,
        # w*'s test accuracy is 0.772 (Bayes 0.806). Accuracy depends only on w's direction,
        # which every method finds within a few steps: evaluate every step.
        target=0.77,
        penalty=_logistic_penalty(_LOGISTIC_MU),
        eval_every=1,
        # A whole run takes ~50 ms, the target is met in ~1 ms: seconds would be timer noise.
        profile_by="steps",
    ),
    Task(
        name="entity-lstm",
        description=(
            "LSTM tagger on synthetic named-entity tagging: topic- and span-dependent tags, "
            "rare and unseen names, 5% label noise (offline)"
        ),
        load=lambda d: data_lib.make_entity_tagging(seed=0),
        make_model=lambda ds, rngs: models.LSTMTagger(
            ds.info["vocab_size"], ds.num_classes, rngs=rngs
        ),
        metrics=tagging_metrics,
        epochs=10,
        batch_size=50,
        # Tuned Adam ends near 0.91 (the noise-free tags score 0.956 on the noisy test tags).
        target=0.90,
    ),
    Task(
        name="modular-transformer",
        description="1-layer Transformer on x + y mod 97, half the table for training",
        load=_modular,
        make_model=lambda ds, rngs: models.Transformer(
            ds.info["vocab_size"], d_model=64, num_heads=4, num_layers=1, max_len=4, rngs=rngs
        ),
        metrics=last_token_metrics,
        epochs=50,
        batch_size=256,
        target=0.90,
    ),
    Task(
        name="mnist-lenet5",
        description=(
            f"LeNet-5 on MNIST padded to 32x32 (IDX files in --data-dir; {_THESIS} sec. 4.1)"
        ),
        load=_mnist,
        make_model=lambda ds, rngs: models.LeNet5(ds.num_classes, rngs=rngs),
        metrics=classification_metrics,
        epochs=20,
        batch_size=100,
        target=0.985,
        needs_data_dir=True,
    ),
    Task(
        name="cifar10-resnet18",
        description=f"ResNet-18 on CIFAR-10 (binary files in --data-dir; {_THESIS} sec. 4.2)",
        load=_cifar10,
        make_model=lambda ds, rngs: models.ResNet18(ds.num_classes, rngs=rngs),
        metrics=classification_metrics,
        epochs=20,
        batch_size=100,
        target=0.75,
        needs_data_dir=True,
    ),
]

_TASK_LIST.append(
    Task(
        name="conll-lstm",
        description=(
            "LSTM tagger on CoNLL-2003 English NER, per-token accuracy (eng.train / eng.testb "
            f"or train.txt / test.txt in --data-dir; {_THESIS} sec. 4.3)"
        ),
        load=_conll,
        make_model=lambda ds, rngs: models.LSTMTagger(
            ds.info["vocab_size"], ds.num_classes, rngs=rngs
        ),
        metrics=masked_tagging_metrics,
        example_weight=padded_tag_count,
        # The thesis's budget (20 epochs of 2-sentence batches) and its time-to-accuracy
        # target (0.91).
        epochs=20,
        batch_size=2,
        target=0.91,
        needs_data_dir=True,
    )
)

# Byte-level causal language modelling (optlab.data.text): next-byte cross-entropy and accuracy
# per window. Sized for a 2-core CPU: a 2-layer, width-64 Transformer (137k parameters) over
# 64-byte windows; one epoch of the standard-library corpus is ~39k windows (1,220 steps of 32).
# Scale up with --epochs and --batch-size, or with `optlab lab clarifying-shampoo --d-model ...`.
# Target 0.50 next-byte accuracy: `optlab compare --task stdlib-lm --optimizers adamw` (seed 0,
# AdamW's generic lr 1e-3) ended the epoch at 0.551 and first reached 0.50 at step 800 of 1223.
_LM_SEQ_LEN = 64


def _stdlib_text(data_dir: str | os.PathLike | None) -> data_lib.Dataset:
    del data_dir
    return data_lib.load_text(seq_len=_LM_SEQ_LEN)


def _text_file(data_dir: str | os.PathLike | None) -> data_lib.Dataset:
    # --data-dir names the text file itself, or a directory holding input.txt (the file name
    # of Karpathy's Tiny Shakespeare).
    path = os.fspath(data_dir) if data_dir is not None else "input.txt"
    if os.path.isdir(path):
        path = os.path.join(path, "input.txt")
    return data_lib.load_text(text_file=path, seq_len=_LM_SEQ_LEN)


def _byte_lm(ds: data_lib.Dataset, rngs: nnx.Rngs) -> nnx.Module:
    return models.Transformer(
        ds.info["vocab_size"], d_model=64, num_heads=4, num_layers=2, max_len=_LM_SEQ_LEN, rngs=rngs
    )


_TASK_LIST += [
    Task(
        name="stdlib-lm",
        description=(
            "byte-level causal LM (2-layer Transformer, width 64) on the Python standard "
            "library's sources, held-out files for testing (offline)"
        ),
        load=_stdlib_text,
        make_model=_byte_lm,
        metrics=tagging_metrics,
        epochs=1,
        batch_size=32,
        target=0.50,
        eval_every=100,
    ),
    Task(
        name="text-lm",
        description=(
            "byte-level causal LM as stdlib-lm on your text (--data-dir FILE, or a directory "
            "with input.txt such as Tiny Shakespeare; last 10% held out)"
        ),
        load=_text_file,
        make_model=_byte_lm,
        metrics=tagging_metrics,
        epochs=1,
        batch_size=32,
        target=0.50,
        eval_every=100,
        needs_data_dir=True,
    ),
]

TASKS: Mapping[str, Task] = MappingProxyType({t.name: t for t in _TASK_LIST})
"""Every task ``optlab compare`` knows, by name."""

DEFAULT_TASK = "digits-lenet5"
"""The task ``optlab compare`` runs when no ``--task`` is given."""


TASK_ALIASES: Mapping[str, str] = MappingProxyType({"zipf-lstm": "entity-lstm"})
"""Old task names that still work, and the task they now run.

``zipf-lstm`` (tags ``(c(x_t) + c(x_{t-1})) mod 5`` of Zipf tokens) saturated: every registered
optimizer reached test accuracy 1.0. ``entity-lstm`` replaced it, with the same model and
budget.
"""


def canonical_task_name(name: str) -> str:
    """``name``, or the task an old name (:data:`TASK_ALIASES`) now runs."""
    return TASK_ALIASES.get(name, name)


def get_task(name: str) -> Task:
    """The task called ``name`` (or an alias of it); ``KeyError`` with the known names otherwise."""
    try:
        return TASKS[canonical_task_name(name)]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def load_task_data(task: Task, data_dir: str | os.PathLike | None = None) -> data_lib.Dataset:
    """Load ``task``'s data; file-based tasks need ``data_dir`` (``ValueError`` without it)."""
    if task.needs_data_dir and data_dir is None:
        raise ValueError(
            f"task {task.name!r} reads its data from local files: pass --data-dir "
            "(optlab never downloads)"
        )
    return task.load(data_dir if task.needs_data_dir else None)


def task_summary(task: Task) -> dict[str, Any]:
    """The task's defaults as a JSON-ready dict (for ``results.json`` and ``--list``)."""
    return {
        "name": task.name,
        "description": task.description,
        "epochs": task.epochs,
        "batch_size": task.batch_size,
        "target": task.target,
        "needs_data_dir": task.needs_data_dir,
        "profile_by": task.profile_by,
    }
