"""K-FAC step time and loss after N steps: optlab.kfac vs kfac-jax 0.0.8, in the same process.

Workloads (scikit-learn's 8x8 digits, 1438 training images, batch 64, one fixed batch order):

* ``autoencoder``: kfac-jax's flagship example scaled to the digits, an MLP autoencoder
  64-128-64-16-64-128-64 with tanh, sigmoid cross-entropy against the pixel intensities;
* ``autoencoder-wide``: the same with the flagship's own widths, 64-1000-500-250-30-250-500-
  1000-64 (1001 x 1001 input factors);
* ``classifier``: an MLP classifier 64-128-128-10 with ReLU, softmax cross-entropy;
* ``classifier-wide``: the same at the autoencoder's width, 64-1000-1000-10 (1001 x 1001
  factors), where the step is no longer dispatch overhead.

Matched settings: the same initial weights and batches; the true Fisher with targets sampled
from the model (kfac-jax ``estimation_mode="fisher_gradients"``, optlab ``fisher="true"``),
factors every step with decay 0.95 (``curvature_ema`` / ``factor_decay``), damped inverses every
5 steps (``inverse_update_period`` / ``precondition_every``), fixed damping split by pi, fixed
learning rate and heavy-ball momentum, the same KL-clipping ``norm_constraint``, no L2, no
burn-in. Differences left: kfac-jax's factor average weights the first steps 1, 0.95, 0.95^2...
(its weighted moving average), optlab's ``min(1 - 1/k, 0.95)`` (the same from step 20 on);
their sampled targets come from different random streams.

What is timed: each library's own step as a user calls it. optlab: one ``jax.jit`` of
``kfac_value_and_grad`` + ``update`` + ``apply_updates`` (the user's own jit; donated state);
kfac-jax: ``Optimizer.step``, which stages (compiles) itself and must not be jitted by the user.
Every step is timed with ``jax.block_until_ready``. The machine is shared, so each run is
repeated ``--rounds`` times (interleaved: optlab, kfac-jax, optlab, ...) and every step's time is
the fastest of its rounds; ``amortized`` is their mean after the first 5 steps (compilation
excluded), ``plain`` the median of the steps that refresh no inverse, ``refresh`` the median of
those that do (every 5th); ``first step`` is the first round's first call (compilation
included). ``loss`` is the
mean training loss of the last 20 steps and ``full loss`` the loss on the whole training set
after N steps (same function for both).

Run::

    python benchmarks/kfac.py [--steps 300] [--rounds 3] [--out FILE] [--workloads a,b]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import machine_info, markdown_table  # noqa: E402

import optlab  # noqa: E402
from optlab import data as data_lib  # noqa: E402

LR = 0.01
MOMENTUM = 0.9
DAMPING = 1e-2
EMA = 0.95
EVERY = 5
NORM_CONSTRAINT = 1e-2
BATCH = 64
WORKLOADS = {
    "autoencoder": ((64, 128, 64, 16, 64, 128, 64), "tanh", "sigmoid_cross_entropy"),
    # kfac-jax's MNIST autoencoder widths (1000-500-250-30) on the digits' 64 pixels.
    "autoencoder-wide": (
        (64, 1000, 500, 250, 30, 250, 500, 1000, 64),
        "tanh",
        "sigmoid_cross_entropy",
    ),
    "classifier": ((64, 128, 128, 10), "relu", "softmax_cross_entropy"),
    "classifier-wide": ((64, 1000, 1000, 10), "relu", "softmax_cross_entropy"),
}


def init_weights(widths: tuple[int, ...], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32),
            np.zeros(b, np.float32),
        )
        for a, b in zip(widths[:-1], widths[1:])
    ]


def activation(name: str):
    return jnp.tanh if name == "tanh" else jax.nn.relu


# -- optlab ----------------------------------------------------------------------------------------
class MLP(nnx.Module):
    def __init__(self, weights, act: str):
        self.layers = nnx.List([nnx.Linear(*w.shape, rngs=nnx.Rngs(0)) for w, _ in weights])
        for layer, (w, b) in zip(self.layers, weights):
            layer.kernel[...] = jnp.asarray(w)
            layer.bias[...] = jnp.asarray(b)
        self.act = activation(act)

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


def optlab_runner(weights, act: str, loss: str):
    model = MLP(weights, act)
    graphdef, params = nnx.split(model)
    tx = optlab.kfac(
        LR,
        damping=DAMPING,
        momentum=MOMENTUM,
        factor_decay=EMA,
        precondition_every=EVERY,
        norm_constraint=NORM_CONSTRAINT,
    )
    vg = optlab.kfac_value_and_grad(loss, "true")

    def step(params, state, x, y, key):
        loss_value, grads, curvature = vg(nnx.merge(graphdef, params), x, y, key=key)
        updates, state = tx.update(grads, state, params, curvature=curvature)
        return optax.apply_updates(params, updates), state, loss_value

    step = jax.jit(step, donate_argnums=(0, 1))

    def run(batches):
        p = jax.tree.map(jnp.copy, params)
        state = tx.init(p)
        key = jax.random.key(1)
        times, losses = [], []
        for i, (x, y) in enumerate(batches):
            t0 = time.perf_counter()
            p, state, loss_value = step(p, state, x, y, jax.random.fold_in(key, i))
            jax.block_until_ready((p, state, loss_value))
            times.append(time.perf_counter() - t0)
            losses.append(float(loss_value))
        final = [
            (np.asarray(layer.kernel[...]), np.asarray(layer.bias[...]))
            for layer in nnx.merge(graphdef, p).layers
        ]
        return times, losses, final

    return run


# -- kfac-jax --------------------------------------------------------------------------------------
def import_kfac_jax():
    """kfac_jax 0.0.8, shimmed for JAX >= 0.10 inside this process only.

    Its graph matcher unpacks ``Primitive.get_bind_params`` as ``(subfuns, params)``; JAX 0.10
    returns the params alone (one of the JAX-internals breakages its users report, kfac-jax
    #279 / #338). The shim accepts both forms; nothing else is changed.
    """
    import kfac_jax
    from jax.extend import source_info_util
    from kfac_jax._src import tag_graph_matcher as tgm

    def eval_jaxpr_eqn(eqn, in_values):
        bound = eqn.primitive.get_bind_params(eqn.params)
        subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
        with source_info_util.user_context(eqn.source_info.traceback):
            output = eqn.primitive.bind(*subfuns, *in_values, **params)
        return output if isinstance(output, list) else [output]

    tgm.eval_jaxpr_eqn = eval_jaxpr_eqn
    return kfac_jax


def kfac_jax_runner(weights, act: str, loss: str):
    kfac_jax = import_kfac_jax()

    fn = activation(act)

    def loss_fn(params, batch):
        x, y = batch
        for w, b in params[:-1]:
            x = fn(x @ w + b)
        w, b = params[-1]
        out = x @ w + b
        if loss == "softmax_cross_entropy":
            kfac_jax.register_softmax_cross_entropy_loss(out, y)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
        kfac_jax.register_sigmoid_cross_entropy_loss(out, y)
        return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(out, y), axis=-1))

    optimizer = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss_fn),
        l2_reg=0.0,
        use_adaptive_learning_rate=False,
        learning_rate_schedule=lambda _: LR,
        use_adaptive_momentum=False,
        momentum_schedule=lambda _: MOMENTUM,
        use_adaptive_damping=False,
        damping_schedule=lambda _: DAMPING,
        norm_constraint=NORM_CONSTRAINT,
        num_burnin_steps=0,
        estimation_mode="fisher_gradients",
        curvature_ema=EMA,
        inverse_update_period=EVERY,
        multi_device=False,
    )
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]

    def run(batches):
        p = jax.tree.map(jnp.copy, params)
        key = jax.random.key(2)
        state = optimizer.init(p, key, batches[0])
        times, losses = [], []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            p, state, stats = optimizer.step(
                p, state, jax.random.fold_in(key, i), batch=batch, global_step_int=i
            )
            jax.block_until_ready((p, state))
            times.append(time.perf_counter() - t0)
            losses.append(float(stats["loss"]))
        return times, losses, [(np.asarray(w), np.asarray(b)) for w, b in p]

    return run


# -- measurement -----------------------------------------------------------------------------------
def full_loss(weights, act: str, loss: str, x: np.ndarray, y: np.ndarray) -> float:
    fn = activation(act)
    h = jnp.asarray(x)
    for w, b in weights[:-1]:
        h = fn(h @ w + b)
    out = h @ weights[-1][0] + weights[-1][1]
    if loss == "softmax_cross_entropy":
        return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y)))
    return float(jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(out, y), axis=-1)))


def summarize(rounds: list[list[float]]) -> dict[str, float]:
    """Per step the fastest of the rounds (a step a busy neighbour slowed down in one round is
    rarely slowed in all), then: ``amortized`` their mean after the first 5 steps, ``plain``
    the median of the steps without an inverse refresh, ``refresh`` the median of those with."""
    times = [min(ts) for ts in zip(*rounds)]
    steady = times[EVERY:]
    refresh = [t for i, t in enumerate(times) if i >= EVERY and i % EVERY == 0]
    plain = [t for i, t in enumerate(times) if i >= EVERY and i % EVERY != 0]
    return {
        "first": rounds[0][0],
        "amortized": sum(steady) / len(steady),
        "plain": statistics.median(plain),
        "refresh": statistics.median(refresh) if refresh else float("nan"),
    }


def batches_for(workload: str, steps: int) -> tuple[list[Any], np.ndarray, np.ndarray]:
    ds = data_lib.load_digits(seed=0)
    x = ds.x_train.reshape(len(ds.x_train), -1)
    y = x if workload.startswith("autoencoder") else ds.y_train
    it = data_lib.batch_iterator(
        x, y, batch_size=BATCH, seed=0, drop_remainder=True, epochs=steps // (len(x) // BATCH) + 1
    )
    out = []
    for i, (xb, yb) in enumerate(it):
        if i == steps:
            break
        out.append((jnp.asarray(xb), jnp.asarray(yb)))
    return out, x, y


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/kfac.md")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from {list(WORKLOADS)}"
    )
    args = parser.parse_args(argv)
    chosen = args.workloads.split(",")
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {list(WORKLOADS)}")
    load_start = os.getloadavg()[0]
    rows = []
    verdicts = []
    for workload in chosen:
        widths, act, loss = WORKLOADS[workload]
        batches, x_all, y_all = batches_for(workload, args.steps)
        weights = init_weights(widths, seed=0)
        runners = {
            "optlab.kfac": optlab_runner(weights, act, loss),
            "kfac-jax 0.0.8": kfac_jax_runner(weights, act, loss),
        }
        times: dict[str, list[list[float]]] = {name: [] for name in runners}
        results: dict[str, Any] = {}
        for r in range(args.rounds):
            for name, run in runners.items():
                step_times, losses, final = run(batches)
                times[name].append(step_times)
                print(f"{workload} round {r} {name}: {sum(step_times):.2f} s", flush=True)
                results.setdefault(name, (losses, final))  # every round is the same run
        best = {name: summarize(times[name]) for name in runners}
        for name in runners:
            losses, final = results[name]
            s = best[name]
            rows.append(
                [
                    workload,
                    name,
                    f"{s['first']:.2f}",
                    f"{s['plain'] * 1e3:.2f}",
                    f"{s['refresh'] * 1e3:.2f}",
                    f"{s['amortized'] * 1e3:.2f}",
                    f"{s['amortized'] / best['kfac-jax 0.0.8']['amortized']:.2f}",
                    f"{np.mean(losses[-20:]):.4f}",
                    f"{full_loss(final, act, loss, x_all, y_all):.4f}",
                ]
            )
        ratio = best["optlab.kfac"]["amortized"] / best["kfac-jax 0.0.8"]["amortized"]
        ours = full_loss(results["optlab.kfac"][1], act, loss, x_all, y_all)
        theirs = full_loss(results["kfac-jax 0.0.8"][1], act, loss, x_all, y_all)
        ok = ratio <= 0.5 and ours <= theirs * 1.05
        verdicts.append(
            f"- {'PASS' if ok else 'FAIL'} ({workload}): optlab amortized step {ratio:.2f}x "
            f"kfac-jax's (target <= 0.5x); full training loss after {args.steps} steps "
            f"{ours:.4f} vs {theirs:.4f} (target: no worse, within 5% sampling noise)"
        )
    headers = [
        "workload",
        "optimizer",
        "first step s",
        "plain step ms",
        "refresh step ms",
        "amortized ms",
        "amortized / kfac-jax",
        f"train loss (last 20 of {args.steps})",
        "full train loss",
    ]
    lines = [
        "## K-FAC: optlab.kfac vs kfac-jax 0.0.8 (digits MLP autoencoder and classifier)",
        "",
        f"Command: `python benchmarks/kfac.py --steps {args.steps} --rounds {args.rounds}`",
        "",
        "Machine: "
        + ", ".join(f"{k} {v}" for k, v in machine_info().items())
        + f"; 1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        f"the end on {os.cpu_count()} cores (other processes' load inflates multithreaded "
        "LAPACK calls most: see the refresh column).",
        "",
        f"Settings: lr {LR}, momentum {MOMENTUM}, damping {DAMPING} (pi-split), factor decay "
        f"{EMA}, inverses every {EVERY} steps, KL clip {NORM_CONSTRAINT}, true Fisher (1 "
        f"sampled target per case), batch {BATCH}; per step the fastest of {args.rounds} "
        "interleaved rounds.",
        "",
        markdown_table(rows, headers),
        "",
        *verdicts,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
