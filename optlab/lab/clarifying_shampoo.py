"""The claims of "Clarifying Shampoo", measured on a small byte-level language model.

Eschenhagen, Cai, Lee, Shi, "Clarifying Shampoo" (arXiv:2602.09314) claim that (1) Shampoo is
more token-efficient than Muon, as Adam is than Signum; (2) Shampoo's update on a weight matrix
is an adapted Muon update; (3) Shampoo's benefit comes only from its use on weight matrices;
(4) its updates are semi-orthogonal only on average over time. (2) is an identity
(:func:`optlab.analysis.shampoo_muon_decomposition`); this module measures (1), (3) and (4):

* **Token efficiency (1).** AdamW, Muon (hidden matrices; AdamW for embeddings, head, biases
  and norms: :func:`optlab.muon`), Shampoo (Adam grafting: :func:`optlab.shampoo`) and SOAP
  (:func:`optlab.soap`) train the same decoder-only :class:`~optlab.models.Transformer` on
  next-byte prediction (:func:`optlab.data.load_text`: the Python standard library's sources,
  or a user's file), from the same initialization and the same batches for a given seed. Each
  is tuned by the same learning-rate sweep (:attr:`StudyConfig.lr_grid`: the same trials for
  every optimizer, AlgoPerf-style, on one seed), then rerun at its best rate on
  :attr:`StudyConfig.seeds` seeds. Reported per optimizer: the validation loss at the fixed
  token budget and the tokens to reach a target validation loss (mean and spread over seeds),
  the tuned rate and the step time.
* **Ablation (3).** ``optax.partition`` with labels from :func:`optlab.muon_labels` ("matrix":
  the hidden weight matrices, "other": embeddings, output head, biases, LayerNorm): Shampoo on
  the matrices + AdamW on the rest, and AdamW on the matrices + Shampoo on the rest, both at
  Shampoo's tuned rate on every seed.
* **Semi-orthogonality (4).** During the seed-0 run at the tuned rate, the optimizer's update
  ``O_t`` of two weight matrices (an attention output and an MLP output projection) is recorded
  at every step, and :func:`optlab.analysis.semi_orthogonality` gives the per-step distance
  ``d(O_t O_t^T)`` and the running-average distance ``d((1/t) sum_s O_s O_s^T)``; Muon's
  (semi-orthogonal at every step up to its Polar Express accuracy) is the reference point.
  ``O_t`` is the transform's output at unit learning rate (the schedule multiplies it
  afterwards), so the average weighs the steps by the optimizer's own update sizes, not by
  the warmup and decay. Both matrices write into the residual stream, whose gradient is
  zero-sum over the features (every reader is a LayerNorm), so the distance is measured in
  the complement of the all-ones direction (:func:`residual_complement`); otherwise that
  structural zero singular value puts even Muon at ``1 / sqrt(d - 1)``.

One learning rate per optimizer, one grid for all. Every optimizer here takes Adam-sized
steps: AdamW; Shampoo with Adam grafting; SOAP (Adam in Shampoo's eigenbasis); Muon with the
``"rms"`` shape scale of Liu et al. (2025), which matches the update RMS of AdamW (0.2), so
Muon's matrices and its AdamW part share one rate. Hence one grid serves all four and the
tuned rates are comparable. The schedule is a linear warmup over
:attr:`StudyConfig.warmup_fraction` of the steps then cosine decay to 10% of the peak; no weight
decay (at these budgets it changes little and it would be a second hyperparameter to tune per
optimizer). Since no optimizer decays weights, the learning rate multiplies the transform's
output exactly (each optimizer ends in ``scale_by_learning_rate``), so one compiled step per
optimizer serves every rate and seed.

Target. Tokens to target are read off the validation curve (evaluated every
:attr:`StudyConfig.eval_every` steps, linearly interpolated between evaluations). The default
target is AdamW's mean final validation loss at the budget (the baseline): an optimizer more
token-efficient than AdamW reaches it before the budget ends; ``target_loss`` sets it
explicitly.

Settings. :data:`QUICK` (the command's default: a 2-layer, width-64 model, 137k parameters,
64-byte context, 200 steps of 16 windows: 205k tokens per run; 30 runs) took 292 CPU
seconds on a 2-core CPU (docs/clarifying_shampoo.md); :data:`FULL` (width
128, 471k parameters, 400 steps: 410k tokens per run; a 6-point grid: 38 runs) took 1670
CPU seconds (1510 s wall) on the same CPU.
Both scale up by the same fields (``--d-model``, ``--steps``, ... on the command line) on a
faster machine. Results and plots: ``docs/clarifying_shampoo.md``.

Example:
  >>> from optlab.lab import clarifying_shampoo as cs
  >>> cfg = cs.QUICK.replace(d_model=16, num_heads=2, num_layers=1, seq_len=16, batch_size=4,
  ...                        steps=4, eval_every=2, eval_windows=4, lr_grid=(3e-3,), seeds=1)
  >>> data = cs.study_data(cfg)
  >>> run = cs.train_lm(data, "adamw", cfg, learning_rate=3e-3, seed=0)
  >>> run.steps, len(run.val_loss)
  ([0, 2, 4], 3)

Command line: ``optlab lab clarifying-shampoo``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

OPTIMIZERS = ("adamw", "muon", "shampoo", "soap")
#: The ablation's two partitions: Shampoo on the hidden matrices and AdamW on the rest, and
#: the converse.
ABLATIONS = ("shampoo-matrices+adamw-rest", "adamw-matrices+shampoo-rest")
#: :func:`ablation_labels`'s two labels.
MATRIX, OTHER = "matrix", "other"

REFERENCE = 'Eschenhagen, Cai, Lee, Shi, "Clarifying Shampoo", arXiv:2602.09314'


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Every setting of the study (model, data, budget, tuning).

    Attributes:
      d_model, num_heads, num_layers, mlp_ratio: the Transformer (vocabulary 256 bytes).
      seq_len: context length in bytes.
      batch_size: windows per step (tokens per step: ``batch_size * seq_len``).
      steps: steps per run (the token budget is ``steps * batch_size * seq_len``).
      eval_every: steps between validation evaluations.
      eval_windows: fixed validation windows evaluated (evenly spaced over the held-out text).
      warmup_fraction: share of the steps of linear warmup, then cosine decay to 10%.
      lr_grid: the peak learning rates tried for every optimizer on the first seed.
      seeds: runs at the tuned rate (seeds ``seed``, ``seed + 1``, ...; the sweep's is reused).
      target_loss: validation loss for tokens-to-target; ``None``: AdamW's mean final loss.
      text_file: a local text file instead of the standard-library corpus.
      ablation: run the claim-(3) ablation.
    """

    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    mlp_ratio: int = 4
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 200
    eval_every: int = 20
    eval_windows: int = 64
    warmup_fraction: float = 0.05
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    seeds: int = 3
    target_loss: float | None = None
    text_file: str | None = None
    ablation: bool = True

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def validate(self) -> None:
        """``ValueError`` naming the first field out of range."""
        for name in (
            "d_model",
            "num_heads",
            "num_layers",
            "mlp_ratio",
            "seq_len",
            "batch_size",
            "steps",
            "eval_every",
            "eval_windows",
            "seeds",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not self.lr_grid or not all(math.isfinite(v) and v > 0 for v in self.lr_grid):
            raise ValueError(f"lr_grid must be learning rates > 0, got {self.lr_grid!r}")
        if len(set(self.lr_grid)) != len(self.lr_grid):
            raise ValueError(f"lr_grid lists a rate twice: {self.lr_grid!r}")
        if self.target_loss is not None and not (
            math.isfinite(self.target_loss) and self.target_loss > 0
        ):
            raise ValueError(f"target_loss must be a number > 0, got {self.target_loss!r}")


#: The command line's default: a few minutes on a 2-core CPU (docs/clarifying_shampoo.md).
QUICK = StudyConfig()
#: The documented full setting: 1670 CPU seconds on a 2-core CPU (docs/clarifying_shampoo.md).
FULL = StudyConfig(
    d_model=128,
    steps=400,
    eval_every=20,
    eval_windows=128,
    # One step wider on both sides than the quick grid: the quick run's best rates for AdamW
    # (1e-3) and Muon (3e-2) sat on its edges.
    lr_grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
)


# -- data --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StudyData:
    """Training byte stream, fixed validation windows, and the corpus's description."""

    train_tokens: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    description: str
    corpus_sha256: str


def study_data(config: StudyConfig) -> StudyData:
    """The corpus of ``config`` (:func:`optlab.data.load_text`) and its validation windows.

    Raises ``ValueError`` / ``FileNotFoundError`` from the loader (unreadable or too small
    ``text_file``, no standard-library sources).
    """
    from optlab.data import load_text

    ds = load_text(text_file=config.text_file, seq_len=config.seq_len)
    n = ds.x_test.shape[0]
    # Evenly spaced windows over the whole held-out text (every file), the same in every run.
    idx = np.unique(np.linspace(0, n - 1, min(n, config.eval_windows)).round().astype(int))
    return StudyData(
        train_tokens=np.asarray(ds.info["train_tokens"]),
        val_x=ds.x_test[idx],
        val_y=ds.y_test[idx],
        description=ds.info["description"],
        corpus_sha256=ds.info["corpus_sha256"],
    )


# -- optimizers --------------------------------------------------------------------------------


def ablation_labels(params: Any) -> Any:
    """``"matrix"`` for the hidden weight matrices, ``"other"`` for every other leaf.

    The split of :func:`optlab.muon_labels` (rank >= 2 and not an embedding, head or bias:
    ``"muon"``), renamed; usable as ``optax.partition``'s ``param_labels``.
    """
    import optlab

    return jax.tree.map(lambda x: MATRIX if x == "muon" else OTHER, optlab.muon_labels(params))


def _adamw() -> optax.GradientTransformation:
    return optax.adamw(1.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)


def _shampoo() -> optax.GradientTransformation:
    import optlab

    # Statistics: long EMA (0.999); the Adam graft's second moment decays as AdamW's (0.95).
    return optlab.shampoo(1.0, b1=0.9, b2=0.999, graft_beta2=0.95, precondition_every=10)


def make_optimizer(name: str) -> optax.GradientTransformation:
    """The study's optimizer ``name`` (:data:`OPTIMIZERS` or :data:`ABLATIONS`) at unit
    learning rate; the training loop multiplies its output by the scheduled rate.

    * ``adamw``: ``optax.adamw`` (b1 0.9, b2 0.95), no weight decay.
    * ``muon``: :func:`optlab.muon` (beta 0.95, Nesterov, ``scale="rms"``) on the hidden
      matrices, AdamW (b1 0.9, b2 0.95) on the rest at the same rate.
    * ``shampoo``: :func:`optlab.shampoo` (Adam grafting, b1 0.9, statistics EMA 0.999, graft
      b2 0.95, new roots every 10 steps; blocks of 1024).
    * ``soap``: :func:`optlab.soap` (b1 = b2 = 0.95, new bases every 10 steps), no weight decay.
    * the two :data:`ABLATIONS`: ``optax.partition`` of Shampoo and AdamW (as above) by
      :func:`ablation_labels`.
    """
    import optlab

    if name == "adamw":
        return _adamw()
    if name == "muon":
        return optlab.muon(1.0, scale="rms", beta=0.95, adam_b1=0.9, adam_b2=0.95)
    if name == "shampoo":
        return _shampoo()
    if name == "soap":
        return optlab.soap(1.0, b1=0.95, b2=0.95, weight_decay=0.0, precondition_every=10)
    if name in ABLATIONS:
        on_matrices = name == ABLATIONS[0]
        return optax.partition(
            {
                MATRIX: _shampoo() if on_matrices else _adamw(),
                OTHER: _adamw() if on_matrices else _shampoo(),
            },
            ablation_labels,
        )
    raise ValueError(f"optimizer must be one of {OPTIMIZERS + ABLATIONS}, got {name!r}")


def lr_schedule(peak: float, config: StudyConfig) -> optax.Schedule:
    """Linear warmup to ``peak`` over ``warmup_fraction`` of the steps, cosine to ``peak/10``."""
    warmup = int(round(config.warmup_fraction * config.steps))
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, max(warmup, 1), max(config.steps, warmup + 1), end_value=0.1 * peak
    )


# -- training ----------------------------------------------------------------------------------


def _leaf_name(path: Sequence[Any]) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            continue  # nnx.Variable's own ``.value``, not part of the module path
        parts.append(str(getattr(k, "key", getattr(k, "idx", k))))
    return ".".join(parts)


def recorded_matrices(config: StudyConfig) -> tuple[str, ...]:
    """The weight matrices whose updates are recorded: block 0's attention output projection
    ``out`` (``d x d``) and the last block's MLP output ``proj`` (``mlp_ratio d x d``), both
    Flax kernels ``[in, out]`` whose ``out`` axis writes into the residual stream."""
    return ("blocks.0.attn.out.kernel", f"blocks.{config.num_layers - 1}.proj.kernel")


def residual_complement(updates: np.ndarray) -> np.ndarray:
    """``O Q``: the updates' last (residual-stream) axis expressed in an orthonormal basis
    ``Q`` (``d x (d - 1)``) of the complement of the all-ones vector.

    Why. In a pre-LayerNorm Transformer the residual stream is read only through LayerNorms,
    and a LayerNorm's output does not change when a constant is added to its input, so the
    gradient with respect to the residual stream sums to zero over the features at every
    position. The gradient of every matrix that writes into the stream (``out``, ``proj``) has
    the all-ones vector in its right null space, and so does Muon's ``U V^T`` (and Shampoo's
    update, whose right factor keeps that null space): each has a structural zero singular
    value, which would put even Muon at distance ``1 / sqrt(d - 1)`` from semi-orthogonality
    for a reason unrelated to the optimizer. Measuring in the complement removes exactly that
    direction (``Q`` has orthonormal columns, so no other singular value changes for updates
    that are zero-sum, as Muon's and Shampoo's are; an element-wise optimizer's update, such
    as AdamW's, loses its mean over the features).

    Args:
      updates: shape ``[..., in, d]``.

    Returns:
      ``[..., in, d - 1]`` in ``updates``' floating dtype.
    """
    updates = np.asarray(updates)
    d = updates.shape[-1]
    # The first d - 1 columns of the centering projector I - 11^T/d span the complement; QR
    # orthonormalizes them (the centering projector has rank d - 1, these columns are
    # independent).
    centered = np.eye(d) - np.full((d, d), 1.0 / d)
    q, _ = np.linalg.qr(centered[:, : d - 1])
    return updates @ q.astype(updates.dtype)


@dataclasses.dataclass
class LMRun:
    """One training run: validation loss at ``steps`` (0 = initialization) and more.

    Attributes:
      optimizer, learning_rate, seed: what ran.
      steps: evaluated steps; ``tokens``: the training tokens seen at each.
      val_loss: mean validation cross-entropy (nats per byte) at each evaluated step.
      train_loss: mean training loss over the steps since the previous evaluation (``nan`` at
        step 0).
      step_seconds: median wall seconds of a step, first two steps (compilation) excluded.
      diverged: the training loss became non-finite or exceeded twice its initial value (the
        run was stopped there).
      orthogonality: per recorded matrix, ``{"per_step": [...], "running_average": [...]}``
        from :func:`optlab.analysis.semi_orthogonality` (only with ``record=True``).
    """

    optimizer: str
    learning_rate: float
    seed: int
    steps: list[int]
    tokens: list[int]
    val_loss: list[float]
    train_loss: list[float]
    step_seconds: float
    diverged: bool
    orthogonality: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """The validation loss at the budget (``inf`` for a diverged run)."""
        if self.diverged or not self.val_loss or not math.isfinite(self.val_loss[-1]):
            return math.inf
        return self.val_loss[-1]

    def tokens_to(self, target: float) -> float | None:
        """:func:`tokens_to_target` of this run."""
        return tokens_to_target(self.tokens, self.val_loss, target)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["final_loss"] = None if math.isinf(self.final_loss) else self.final_loss
        return d


def tokens_to_target(
    tokens: Sequence[float], losses: Sequence[float], target: float
) -> float | None:
    """Tokens at which the loss curve first reaches ``target``, linearly interpolated between
    the two evaluations around the crossing; ``None`` if it never does."""
    prev_t, prev_l = None, None
    for t, loss in zip(tokens, losses, strict=True):
        if math.isfinite(loss) and loss <= target:
            if prev_l is None or not math.isfinite(prev_l):
                return float(t)
            return float(prev_t + (prev_l - target) / (prev_l - loss) * (t - prev_t))
        prev_t, prev_l = t, loss
    return None


class _Trainer:
    """One compiled step and evaluation per optimizer (every rate and seed reuses them)."""

    def __init__(self, name: str, config: StudyConfig, data: StudyData):
        from optlab import models

        self.name, self.config = name, config
        self.model_kwargs = dict(
            d_model=config.d_model,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            mlp_ratio=config.mlp_ratio,
            max_len=config.seq_len,
        )
        model = models.Transformer(256, rngs=nnx.Rngs(0), **self.model_kwargs)
        graphdef, params = nnx.split(model, nnx.Param)
        self.graphdef = graphdef
        self.tx = make_optimizer(name)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        names = [_leaf_name(p) for p, _ in flat]
        self.recorded = recorded_matrices(config)
        index = [names.index(n) for n in self.recorded]
        tx = self.tx

        def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
            logits = nnx.merge(graphdef, params)(x).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(params, opt_state, x, y, lr):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            leaves = jax.tree.leaves(updates)
            new = jax.tree.map(lambda p, u: p + (lr * u).astype(p.dtype), params, updates)
            return new, opt_state, loss, tuple(leaves[i] for i in index)

        self.step = step
        self.evaluate = jax.jit(loss_fn)
        self.val_x, self.val_y = jnp.asarray(data.val_x), jnp.asarray(data.val_y)

    def init(self, seed: int) -> Any:
        from optlab import models

        model = models.Transformer(256, rngs=nnx.Rngs(seed), **self.model_kwargs)
        return nnx.split(model, nnx.Param)[1]


_TRAINERS: dict[tuple[str, StudyConfig, int], _Trainer] = {}


def _trainer(name: str, config: StudyConfig, data: StudyData) -> _Trainer:
    key = (name, config, id(data))
    if key not in _TRAINERS:
        _TRAINERS.clear()  # keep only the latest optimizer's compiled functions alive
        _TRAINERS[key] = _Trainer(name, config, data)
    return _TRAINERS[key]


def train_lm(
    data: StudyData,
    optimizer: str,
    config: StudyConfig,
    *,
    learning_rate: float,
    seed: int,
    record: bool = False,
    progress: Any = None,
) -> LMRun:
    """Train the study's Transformer from ``nnx.Rngs(seed)`` with ``optimizer`` at peak rate
    ``learning_rate`` for ``config.steps`` steps of random-offset windows (drawn from
    ``np.random.default_rng((seed, 1))``: the same batches for every optimizer at one seed).

    With ``record``, the updates of :func:`recorded_matrices` are kept at every step and
    summarized by :func:`optlab.analysis.semi_orthogonality` (:attr:`LMRun.orthogonality`).
    """
    from optlab.analysis import semi_orthogonality
    from optlab.data.text import random_windows

    tr = _trainer(optimizer, config, data)
    schedule = lr_schedule(learning_rate, config)
    params = tr.init(seed)
    opt_state = tr.tx.init(params)
    rng = np.random.default_rng((seed, 1))
    run = LMRun(optimizer, float(learning_rate), seed, [], [], [], [], math.nan, False)
    recorded: list[list[np.ndarray]] = [[] for _ in tr.recorded]

    def evaluate(step: int, train_losses: list[float]) -> None:
        run.steps.append(step)
        run.tokens.append(step * config.tokens_per_step)
        run.val_loss.append(float(tr.evaluate(params, tr.val_x, tr.val_y)))
        run.train_loss.append(float(np.mean(train_losses)) if train_losses else math.nan)

    evaluate(0, [])
    times: list[float] = []
    window: list[float] = []
    first_loss = None
    for step in range(1, config.steps + 1):
        x, y = random_windows(data.train_tokens, config.seq_len, config.batch_size, rng)
        lr = jnp.asarray(schedule(step - 1), jnp.float32)
        t0 = time.perf_counter()
        params, opt_state, loss, leaves = tr.step(params, opt_state, x, y, lr)
        loss = float(loss)  # waits for the step
        times.append(time.perf_counter() - t0)
        first_loss = loss if first_loss is None else first_loss
        window.append(loss)
        if record:
            for acc, leaf in zip(recorded, leaves, strict=True):
                acc.append(np.asarray(leaf))
        if progress is not None:
            progress.update(1)
        if not math.isfinite(loss) or loss > 2.0 * first_loss:
            run.diverged = True
            evaluate(step, window)
            break
        if step % config.eval_every == 0 or step == config.steps:
            evaluate(step, window)
            window = []
            if progress is not None:
                progress.set_postfix_str(f"val {run.val_loss[-1]:.3f}")
    run.step_seconds = float(np.median(times[2:])) if len(times) > 2 else float(np.median(times))
    if record and recorded[0]:
        for name, acc in zip(tr.recorded, recorded, strict=True):
            so = semi_orthogonality(residual_complement(np.stack(acc)))
            run.orthogonality[name] = {
                "per_step": np.asarray(so.per_step).tolist(),
                "running_average": np.asarray(so.running_average).tolist(),
            }
    return run


# -- the study ---------------------------------------------------------------------------------


def _mean_spread(values: Sequence[float | None]) -> dict[str, Any]:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "values": [None if v is None or not math.isfinite(v) else v for v in values],
        "mean": float(np.mean(ok)) if ok else None,
        "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else (0.0 if ok else None),
        "min": float(np.min(ok)) if ok else None,
        "max": float(np.max(ok)) if ok else None,
        "count": f"{len(ok)}/{len(values)}",
    }


def choose_learning_rate(runs: Sequence[LMRun]) -> tuple[float, bool]:
    """The sweep's rate with the lowest final validation loss, and whether it is at the edge of
    the grid (then a wider grid might do better: the table says so)."""
    ordered = sorted(runs, key=lambda r: r.learning_rate)
    best = min(range(len(ordered)), key=lambda i: ordered[i].final_loss)
    return ordered[best].learning_rate, len(ordered) > 1 and best in (0, len(ordered) - 1)


def run_study(
    config: StudyConfig,
    *,
    optimizers: Sequence[str] = OPTIMIZERS,
    seed: int = 0,
    progress: Callable[[str, int], Any] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Sweep, seeds, ablation and semi-orthogonality (module docstring); JSON-ready results.

    Args:
      config: the settings (:class:`StudyConfig`; validated here).
      optimizers: a subset of :data:`OPTIMIZERS` (the ablation needs ``shampoo``).
      seed: the first seed (sweep seed); the repeats use ``seed + 1``, ...
      progress: ``(description, total_steps) -> bar`` (tqdm-like: ``update``,
        ``set_postfix_str``, ``close``) or ``None``.
      on_phase: called with a phase name after each phase (the CLI's clock).

    Returns:
      ``{"config", "data", "sweep", "runs", "summary", "target_loss", "target_rule",
      "ablation", "orthogonality", "ordering"}``: every run's curves, and per optimizer the
      tuned rate, final loss and tokens to target (mean and spread over seeds), step time.
    """
    config.validate()
    names = list(optimizers)
    for n in names:
        if n not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {n!r}; known: {', '.join(OPTIMIZERS)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"optimizers must be distinct names from {OPTIMIZERS}, got {names}")
    data = study_data(config)

    def run(name: str, lr: float, s: int, record: bool) -> LMRun:
        bar = progress(f"{name} lr {lr:g} seed {s}", config.steps) if progress else None
        try:
            return train_lm(
                data, name, config, learning_rate=lr, seed=s, record=record, progress=bar
            )
        finally:
            if bar is not None:
                bar.close()

    sweep: dict[str, list[LMRun]] = {}
    runs: dict[str, list[LMRun]] = {}
    tuned: dict[str, dict[str, Any]] = {}
    for name in names:
        sweep[name] = [run(name, lr, seed, True) for lr in config.lr_grid]
        lr, edge = choose_learning_rate(sweep[name])
        best = next(r for r in sweep[name] if r.learning_rate == lr)
        runs[name] = [best] + [run(name, lr, seed + k, False) for k in range(1, config.seeds)]
        tuned[name] = {"learning_rate": lr, "at_grid_edge": edge}
        if on_phase:
            on_phase(f"train_{name}")

    ablation_runs: dict[str, list[LMRun]] = {}
    if config.ablation and "shampoo" in tuned:
        lr = tuned["shampoo"]["learning_rate"]
        for name in ABLATIONS:
            ablation_runs[name] = [run(name, lr, seed + k, False) for k in range(config.seeds)]
        if on_phase:
            on_phase("ablation")

    if config.target_loss is not None:
        target, rule = float(config.target_loss), "given (target_loss)"
    elif "adamw" in runs:
        finals = [r.final_loss for r in runs["adamw"] if math.isfinite(r.final_loss)]
        target = float(np.mean(finals)) if finals else math.inf
        rule = "AdamW's mean final validation loss at the budget"
    else:
        means = [np.mean([r.final_loss for r in rs]) for rs in runs.values()]
        target, rule = float(max(means)), "the highest mean final validation loss"

    def summarize(rs: Sequence[LMRun]) -> dict[str, Any]:
        return {
            "final_loss": _mean_spread([r.final_loss for r in rs]),
            "tokens_to_target": _mean_spread([r.tokens_to(target) for r in rs]),
            "step_seconds": float(np.median([r.step_seconds for r in rs])),
            "diverged": sum(r.diverged for r in rs),
        }

    summary = {n: {**tuned[n], **summarize(rs)} for n, rs in runs.items()}
    ablation = {n: summarize(rs) for n, rs in ablation_runs.items()}

    def key(n: str) -> float:
        m = summary[n]["final_loss"]["mean"]
        return math.inf if m is None else m

    ordering = sorted(summary, key=key)
    orthogonality = {n: runs[n][0].orthogonality for n in names}
    budget = config.steps * config.tokens_per_step
    return {
        "config": dataclasses.asdict(config),
        "seed": seed,
        "optimizers": names,
        "data": {
            "description": data.description,
            "corpus_sha256": data.corpus_sha256,
            "validation_windows": int(data.val_x.shape[0]),
            "validation_tokens": int(data.val_x.size),
            "token_budget": budget,
        },
        "parameters": _count_params(config),
        "target_loss": None if math.isinf(target) else target,
        "target_rule": rule,
        "sweep": {n: [r.to_dict() for r in rs] for n, rs in sweep.items()},
        "runs": {n: [r.to_dict() for r in rs] for n, rs in runs.items()},
        "summary": summary,
        "ordering_by_final_loss": ordering,
        "ablation": {
            "learning_rate": tuned.get("shampoo", {}).get("learning_rate"),
            "summary": ablation,
            "runs": {n: [r.to_dict() for r in rs] for n, rs in ablation_runs.items()},
        },
        "orthogonality": {"matrices": list(recorded_matrices(config)), "runs": orthogonality},
        "reference": REFERENCE,
    }


def _count_params(config: StudyConfig) -> dict[str, int]:
    from optlab import models

    model = models.Transformer(
        256,
        d_model=config.d_model,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        mlp_ratio=config.mlp_ratio,
        max_len=config.seq_len,
        rngs=nnx.Rngs(0),
    )
    params = nnx.split(model, nnx.Param)[1]
    labels = jax.tree.leaves(ablation_labels(params))
    sizes = [int(np.size(x)) for x in jax.tree.leaves(params)]
    matrix = sum(s for s, lab in zip(sizes, labels, strict=True) if lab == MATRIX)
    return {"total": sum(sizes), "hidden_matrices": matrix, "other": sum(sizes) - matrix}


__all__ = [
    "ABLATIONS",
    "FULL",
    "OPTIMIZERS",
    "QUICK",
    "LMRun",
    "StudyConfig",
    "StudyData",
    "ablation_labels",
    "choose_learning_rate",
    "lr_schedule",
    "make_optimizer",
    "recorded_matrices",
    "residual_complement",
    "run_study",
    "study_data",
    "tokens_to_target",
    "train_lm",
]
