"""The training loop of ``optlab compare``: one task, several optimizers, same start.

Functional Flax NNX: the model is built from ``nnx.Rngs(seed)`` and split once into
``graphdef``, parameters (``nnx.Param``) and the rest (BatchNorm statistics and any other
state). One ``jax.jit``-compiled step per optimizer maps ``(params, rest, opt_state, x, y)``
to new ones:

* the loss is evaluated on ``nnx.merge(graphdef, params, rest, copy=True)`` (a copy, so the
  step is pure), and the non-parameter state that forward pass produced (new BatchNorm
  running statistics) is returned with the gradient;
* SAM gets ``grad_fn = grad(params -> loss(params, rest, batch))``: the same batch, the
  *current* statistics, and the statistics of the perturbed pass thrown away (Foret et al.
  keep only the clean pass's; the perturbed one must not move the running averages).

Timing. Every step is timed with ``jax.block_until_ready``. The first call of the jitted
step traces, compiles and runs it once: its time is reported as ``compile_s`` (XLA:CPU also
finishes some kernel compilation lazily on that first execution, so an ahead-of-time
``.compile()`` alone would undercount it). ``mean step ms`` averages the later steps. The
"training clock" behind seconds-to-target sums step times only, with the first step counted
as long as the second: compilation and evaluation are excluded (AlgoPerf's clock also stops
during evaluation). The wall clock, which counts everything, is recorded too.

Determinism. For one ``seed``, every optimizer starts from the same initialization and sees
the same batches in the same order (:func:`optlab.data.batch_iterator`), so two runs with the
same seed produce the same curves (XLA on CPU is deterministic).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optlab import data as data_lib
from optlab.bench.registry import BuiltOptimizer
from optlab.bench.tasks import Task

#: Test examples per evaluation batch (the test set is padded to a multiple, one compile).
EVAL_BATCH = 1000


@dataclasses.dataclass
class RunResult:
    """One optimizer's run on one task (JSON-ready through :meth:`to_dict`).

    Attributes:
        optimizer: registry name or ``module:factory``.
        hparams: the hyperparameters it ran with.
        step_loss: training loss of every step (on the step's batch, before the update).
        evals: one dict per evaluation: ``step``, ``epoch``, ``test_acc``, ``test_loss``,
            ``train_loss`` (mean over the steps since the previous evaluation),
            ``train_time`` (training clock, s) and ``wall_time`` (s since the run began).
        compile_s: seconds of the first call of the jitted step (tracing, compilation and
            one execution).
        step_times: seconds of every later step.
        target: the test-accuracy target.
        diverged: the loss became non-finite and training stopped early.
    """

    optimizer: str
    hparams: dict[str, Any]
    step_loss: list[float]
    evals: list[dict[str, float]]
    compile_s: float
    step_times: list[float]
    target: float
    diverged: bool = False

    @property
    def final_acc(self) -> float:
        return self.evals[-1]["test_acc"] if self.evals else float("nan")

    @property
    def best_acc(self) -> float:
        return max((e["test_acc"] for e in self.evals), default=float("nan"))

    @property
    def mean_step_ms(self) -> float:
        """Mean step time, compile (first call) excluded."""
        return 1e3 * float(np.mean(self.step_times)) if self.step_times else float("nan")

    @property
    def median_step_ms(self) -> float:
        return 1e3 * float(np.median(self.step_times)) if self.step_times else float("nan")

    def _first_hit(self) -> dict[str, float] | None:
        return next((e for e in self.evals if e["test_acc"] >= self.target), None)

    @property
    def steps_to_target(self) -> int | None:
        """Steps until the first evaluation at or above the target; ``None`` if missed."""
        hit = self._first_hit()
        return None if hit is None else int(hit["step"])

    @property
    def seconds_to_target(self) -> float | None:
        """Training-clock seconds until the target was first met; ``None`` if missed."""
        hit = self._first_hit()
        return None if hit is None else float(hit["train_time"])

    def time_to_target(self, measure: str) -> float:
        """Time to target for the performance profiles, ``inf`` if missed.

        Args:
            measure: ``"seconds"`` (training clock) or ``"steps"``: the task's
                :attr:`~optlab.bench.tasks.Task.profile_by`.
        """
        if measure == "seconds":
            value: float | None = self.seconds_to_target
        elif measure == "steps":
            value = self.steps_to_target
        else:
            raise ValueError(f"measure must be 'seconds' or 'steps', got {measure!r}")
        return math.inf if value is None else float(value)

    @property
    def wall_s(self) -> float:
        return self.evals[-1]["wall_time"] if self.evals else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "hparams": jsonable(self.hparams),
            "target": self.target,
            "final_acc": self.final_acc,
            "best_acc": self.best_acc,
            "steps_to_target": self.steps_to_target,
            "seconds_to_target": self.seconds_to_target,
            "mean_step_ms": self.mean_step_ms,
            "median_step_ms": self.median_step_ms,
            "compile_s": self.compile_s,
            "wall_s": self.wall_s,
            "diverged": self.diverged,
            "evals": self.evals,
            "step_loss": self.step_loss,
        }


def jsonable(x: Any) -> Any:
    """``x`` with mappings and sequences copied and anything not JSON (a schedule) as ``repr``."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, bool | int | str) or x is None:
        return x
    if isinstance(x, float | np.floating):
        return float(x)
    return repr(x)


# -- the step ----------------------------------------------------------------------------------


def _loss_fn(task: Task, graphdef: nnx.GraphDef) -> Callable[..., Any]:
    """``(params, rest, x, y) -> (loss, new_rest)`` for the training objective."""

    def loss_fn(params, rest, x, y):
        # copy=True: fresh Variables, so running the model under jax.grad mutates nothing.
        model = nnx.merge(graphdef, params, rest, copy=True)
        per_example, _ = task.metrics(model, x, y)
        if task.example_weight is None:
            loss = jnp.mean(per_example)
        else:  # e.g. tokens per padded sentence: the mean over the batch's real tokens
            w = task.example_weight(x, y)
            loss = jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1.0)
        if task.penalty is not None:
            loss = loss + task.penalty(model)
        return loss, nnx.state(model, nnx.Not(nnx.Param))

    return loss_fn


def _kfac_value_and_grad(task: Task, fisher: str = "true") -> Callable[..., Any]:
    """``optlab.kfac_value_and_grad`` for the task's loss: softmax cross-entropy averaged over
    every output position (classification, per-token tagging; padded tags, negative, are no
    loss case there either), no penalty; ``ValueError`` for other tasks."""
    import optlab
    from optlab.bench.tasks import (
        classification_metrics,
        masked_tagging_metrics,
        tagging_metrics,
    )

    supported = (classification_metrics, tagging_metrics, masked_tagging_metrics)
    if task.metrics not in supported or task.penalty is not None:
        raise ValueError(
            f"K-FAC needs its curvature from optlab.kfac_value_and_grad, available for softmax "
            f"cross-entropy tasks without a penalty; task {task.name!r} is not one"
        )
    return optlab.kfac_value_and_grad("softmax_cross_entropy", fisher)


def kfac_curvature_fn(task: Task, optimizer: BuiltOptimizer) -> Callable[..., Any] | None:
    """K-FAC's ``(model, x, y, *, key, compute_curvature) -> (loss, grads, curvature)`` when
    the optimizer is a registered one that needs it
    (:attr:`~optlab.bench.registry.OptimizerSpec.needs_curvature`; its ``fisher``
    hyperparameter), else None. (A ``module:factory`` K-FAC is recognized by its state
    instead, and gets the true Fisher.)"""
    from optlab.bench.registry import OPTIMIZERS

    spec = OPTIMIZERS.get(optimizer.name)
    if spec is None or not spec.needs_curvature:
        return None
    return _kfac_value_and_grad(task, optimizer.hparams.get("fisher", "true"))


def _holds_kfac_state(opt_state: Any) -> bool:
    import optlab

    def is_kfac(s: Any) -> bool:
        return isinstance(s, optlab.KFACState)

    return any(is_kfac(s) for s in jax.tree.leaves(opt_state, is_leaf=is_kfac))


def _kfac_step(graphdef, tx, curvature_fn, params, rest, opt_state, x, y, with_curvature=True):
    """K-FAC's step: loss, gradient and curvature in one call of ``curvature_fn`` (no curvature,
    ``{}``, unless ``with_curvature``); the Fisher's sampling key is the optimizer's step count
    (skipped steps included) folded into key 0."""
    import optlab

    def find(cls: type) -> list[Any]:
        return [
            s
            for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, cls))
            if isinstance(s, cls)
        ]

    count = sum(s.count for s in find(optlab.KFACState))
    skipped = sum(s.skipped_steps for s in find(optlab.SkipNonFiniteState))
    key = jax.random.fold_in(jax.random.key(0), count + skipped)
    model = nnx.merge(graphdef, params, rest, copy=True)
    loss, grads, curvature = curvature_fn(model, x, y, key=key, compute_curvature=with_curvature)
    new_rest = nnx.state(model, nnx.Not(nnx.Param))
    updates, opt_state = tx.update(grads, opt_state, params, curvature=curvature)
    return optax.apply_updates(params, updates), new_rest, opt_state, loss


def make_train_step(
    task: Task,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    needs_grad_fn: bool,
    curvature_fn: Callable[..., Any] | None = None,
    with_curvature: bool = True,
) -> Callable[..., Any]:
    """The unjitted step ``(params, rest, opt_state, x, y) -> (params, rest, opt_state, loss)``.

    K-FAC (``curvature_fn`` given, :func:`kfac_curvature_fn`, or an optimizer state holding an
    ``optlab.KFACState``) computes the loss, the gradient and the curvature with
    ``optlab.kfac_value_and_grad`` and passes ``curvature=`` to the update (``{}`` when not
    ``with_curvature``; its state's step count picks the Fisher's sampling key).
    """
    loss_fn = _loss_fn(task, graphdef)

    def step(params, rest, opt_state, x, y):
        if curvature_fn is not None or _holds_kfac_state(opt_state):
            fn = curvature_fn if curvature_fn is not None else _kfac_value_and_grad(task)
            return _kfac_step(graphdef, tx, fn, params, rest, opt_state, x, y, with_curvature)
        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, y)
        extra = {}
        if needs_grad_fn:
            # Same batch, current (pre-step) statistics; the perturbed pass's are dropped.
            extra["grad_fn"] = jax.grad(lambda p: loss_fn(p, rest, x, y)[0])
        updates, opt_state = tx.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss

    return step


def make_eval_step(task: Task, eval_graphdef: nnx.GraphDef) -> Callable[..., Any]:
    """``(params, rest, x, y, w) -> (sum of v * loss, sum of v * correct, sum of v)``, inference
    mode, where ``v = w`` times the task's :attr:`~optlab.bench.tasks.Task.example_weight`."""

    @jax.jit
    def evaluate(params, rest, x, y, w):
        model = nnx.merge(eval_graphdef, params, rest, copy=True)
        loss, correct = task.metrics(model, x, y)
        if task.example_weight is not None:
            w = w * task.example_weight(x, y)
        return jnp.sum(w * loss), jnp.sum(w * correct), jnp.sum(w)

    return evaluate


def _padded_test_set(ds: data_lib.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test arrays padded to a multiple of the eval batch, and 0/1 weights marking real rows."""
    n = ds.num_test
    size = min(EVAL_BATCH, n)
    total = math.ceil(n / size) * size
    pad = total - n

    def padded(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) if pad else a

    w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return padded(ds.x_test), padded(ds.y_test), w


def _train_clock(step_times: list[float]) -> float:
    """Training seconds so far: the first step (which compiles) counts as long as the second."""
    if not step_times:
        return 0.0
    return step_times[0] + float(np.sum(step_times))


# -- one run -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How long and how to train (shared by every optimizer of one task).

    Attributes:
        epochs: passes over the training set (ignored when ``steps`` is set).
        steps: total steps instead of epochs; evaluation still happens every epoch's worth of
            steps and at the end.
        batch_size: examples per step (the last partial batch of each epoch is dropped so
            shapes stay static: one compile).
        seed: initialization and batch-order seed.
        target: test-accuracy target.
        schedule: ``"constant"`` or ``"cosine"``.
        eval_every: evaluate every this many steps (and at the end); ``None``: every epoch.
    """

    epochs: int
    steps: int | None
    batch_size: int
    seed: int
    target: float
    schedule: str = "constant"
    eval_every: int | None = None


def steps_per_epoch(ds: data_lib.Dataset, batch_size: int) -> int:
    """Steps in one epoch at ``batch_size`` (partial batches dropped)."""
    return data_lib.num_batches(ds.num_train, batch_size, drop_remainder=True)


def total_steps(ds: data_lib.Dataset, settings: RunSettings) -> int:
    """Total training steps of a run with ``settings``."""
    if settings.steps is not None:
        return settings.steps
    return settings.epochs * steps_per_epoch(ds, settings.batch_size)


def train_one(
    task: Task,
    ds: data_lib.Dataset,
    optimizer: BuiltOptimizer,
    settings: RunSettings,
    *,
    evaluate: Callable[..., Any] | None = None,
    progress: Any = None,
) -> RunResult:
    """Train ``task``'s model with one optimizer; see the module docstring.

    Args:
        task, ds: the task and its loaded data.
        optimizer: the optimizer (:func:`optlab.bench.registry.build_optimizer`).
        settings: budget, batch size, seed and target.
        evaluate: a shared :func:`make_eval_step` (built here when ``None``).
        progress: a tqdm-like bar (``update``, ``set_postfix_str``) or ``None``.
    """
    t_start = time.perf_counter()
    name, tx, hparams, needs_grad_fn = optimizer
    model = task.make_model(ds, nnx.Rngs(settings.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if evaluate is None:
        model.eval()  # the eval graphdef: BatchNorm uses its running averages
        evaluate = make_eval_step(task, nnx.split(model, nnx.Param, ...)[0])
    opt_state = tx.init(params)

    spe = steps_per_epoch(ds, settings.batch_size)
    if spe < 1:
        raise ValueError(
            f"batch size {settings.batch_size} exceeds the {ds.num_train} training examples"
        )
    n_steps = total_steps(ds, settings)
    n_epochs = math.ceil(n_steps / spe)
    eval_every = settings.eval_every or spe
    batches = data_lib.batch_iterator(
        ds.x_train,
        ds.y_train,
        batch_size=settings.batch_size,
        seed=settings.seed,
        drop_remainder=True,
        epochs=n_epochs,
    )
    x_test, y_test, w_test = _padded_test_set(ds)
    # Donating the state saves accelerator memory; on CPU it buys nothing, and XLA:CPU hung
    # on donated Shampoo states here (jax 0.10.2), so it is off there.
    donate = () if jax.default_backend() == "cpu" else (0, 1, 2)
    eval_size = min(EVAL_BATCH, ds.num_test)

    def run_eval() -> tuple[float, float]:
        loss_sum = acc_sum = weight_sum = 0.0
        for i in range(0, len(w_test), eval_size):
            sl = slice(i, i + eval_size)
            ls, cs, ws = evaluate(params, rest, x_test[sl], y_test[sl], w_test[sl])
            loss_sum += float(ls)
            acc_sum += float(cs)
            weight_sum += float(ws)
        return loss_sum / weight_sum, acc_sum / weight_sum

    curvature_fn = kfac_curvature_fn(task, optimizer)
    step_fn = jax.jit(
        make_train_step(task, graphdef, tx, needs_grad_fn, curvature_fn), donate_argnums=donate
    )
    curvature_every = int(hparams.get("curvature_every", 1)) if curvature_fn else 1
    extra_compile_s = 0.0
    if curvature_every > 1:
        # K-FAC's curvature every k-th step only: a second step without it, compiled here
        # (counted in compile_s) so that no training step pays its compilation.
        t0 = time.perf_counter()
        batch_shapes = [
            jax.ShapeDtypeStruct((settings.batch_size, *a.shape[1:]), a.dtype)
            for a in (ds.x_train, ds.y_train)
        ]
        plain_fn = (
            jax.jit(
                make_train_step(task, graphdef, tx, needs_grad_fn, curvature_fn, False),
                donate_argnums=donate,
            )
            .lower(params, rest, opt_state, *batch_shapes)
            .compile()
        )
        extra_compile_s = time.perf_counter() - t0
        with_fn, calls = step_fn, [0]

        def step_fn(*args):
            calls[0] += 1
            return (with_fn if (calls[0] - 1) % curvature_every == 0 else plain_fn)(*args)

    step_loss: list[float] = []
    step_times: list[float] = []
    evals: list[dict[str, float]] = []
    since_eval: list[float] = []
    compile_s = 0.0
    diverged = False
    for step, (xb, yb) in enumerate(batches, start=1):
        t0 = time.perf_counter()
        params, rest, opt_state, loss = step_fn(params, rest, opt_state, xb, yb)
        jax.block_until_ready((params, rest, opt_state, loss))
        dt = time.perf_counter() - t0
        if step == 1:
            compile_s = dt + extra_compile_s  # tracing + compilation + the first execution
        else:
            step_times.append(dt)
        loss_f = float(loss)
        step_loss.append(loss_f)
        since_eval.append(loss_f)
        if progress is not None:
            progress.update(1)
        if not math.isfinite(loss_f):
            diverged = True
        if step % eval_every == 0 or step == n_steps or diverged:
            test_loss, test_acc = run_eval()
            evals.append(
                {
                    "step": step,
                    "epoch": step / spe,
                    "test_acc": test_acc,
                    "test_loss": test_loss,
                    "train_loss": float(np.mean(since_eval)),
                    "train_time": _train_clock(step_times),
                    "wall_time": time.perf_counter() - t_start,
                }
            )
            since_eval = []
            if progress is not None:
                progress.set_postfix_str(
                    f"epoch {step / spe:.4g}/{n_steps / spe:.4g} acc {test_acc:.3f}"
                )
        if diverged or step >= n_steps:
            break
    if diverged and progress is not None:
        progress.set_postfix_str("diverged (non-finite loss)")
    return RunResult(
        optimizer=name,
        hparams=hparams,
        step_loss=step_loss,
        evals=evals,
        compile_s=compile_s,
        step_times=step_times,
        target=settings.target,
        diverged=diverged,
    )


def run_task(
    task: Task,
    ds: data_lib.Dataset,
    optimizers: Sequence[BuiltOptimizer],
    settings: RunSettings,
    *,
    quiet: bool = False,
) -> list[RunResult]:
    """Train ``task`` with each optimizer in turn (one shared evaluation step)."""
    results = []
    evaluate = None
    for optimizer in optimizers:
        bar = None
        if not quiet:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total_steps(ds, settings),
                desc=f"{task.name} {optimizer.name:>9}",
                unit="step",
                leave=True,
                dynamic_ncols=True,
            )
        if evaluate is None:
            model = task.make_model(ds, nnx.Rngs(settings.seed))
            model.eval()
            evaluate = make_eval_step(task, nnx.split(model, nnx.Param, ...)[0])
        try:
            results.append(
                train_one(task, ds, optimizer, settings, evaluate=evaluate, progress=bar)
            )
        finally:
            if bar is not None:
                bar.close()
    return results
