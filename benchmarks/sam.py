"""SAM step time: optlab's ``chain(sam_perturb, sgd)`` vs plain SGD vs ``optax.contrib.sam``.

One process, one model, one batch. Every variant is a full training step (gradients +
optimizer update + ``apply_updates``), ``jax.jit``-compiled, run ``--inner`` times inside one
``lax.scan`` per call so Python dispatch does not count, timed with ``block_until_ready`` as
the median of ``--repeats`` calls, interleaved across variants so that load on a shared
machine hits all of them alike. Reported per step.

Variants (all SAM variants: p = 2, same rho, same learning rate, 2 gradient evaluations):

* ``sgd``: the base optimizer, 1 gradient per step.
* ``optlab sam``: ``optax.chain(optlab.sam.sam_perturb(rho), optax.sgd(lr))`` with
  ``grad_fn``.
* ``optax.contrib.sam (opaque)``: ``sam(sgd(lr), chain(normalize(), sgd(rho)),
  opaque_mode=True)`` with ``grad_fn(params, i)``.
* ``optax.contrib.sam (transparent, 2 calls)``: the default mode alternates an adversarial and
  a real step across ``update`` calls, so one SAM step is two calls (two gradients).

Before timing, the script checks that the three SAM variants produce the same parameters
after the same number of SAM steps (rtol 1e-5): they compute the same update.

Run::

    python benchmarks/sam.py                  # writes benchmarks/results/sam.md
    python benchmarks/sam.py --width 1024 --batch 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import format_seconds, machine_info, markdown_table  # noqa: E402

from optlab._src.sam import sam_perturb  # noqa: E402

Params = dict[str, jax.Array]


def init_mlp(key: jax.Array, sizes: list[int]) -> Params:
    params = {}
    for i, (din, dout) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        params[f"w{i}"] = jax.random.normal(sub, (din, dout)) * jnp.sqrt(2.0 / din)
        params[f"b{i}"] = jnp.zeros(dout)
    return params


def mlp_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    n = len(params) // 2
    h = x
    for i in range(n):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def make_runner(kind: str, lr: float, rho: float, inner: int) -> tuple[Any, Callable]:
    """(optimizer, run(params, state, x, y) -> (params, state)) doing ``inner`` SAM steps."""
    sgd = optax.sgd(lr)
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
    if kind == "sgd":
        tx = sgd
    elif kind == "optlab":
        tx = optax.chain(sam_perturb(rho), sgd)
    elif kind == "contrib_opaque":
        tx = optax.contrib.sam(sgd, adv, sync_period=2, opaque_mode=True)
    elif kind == "contrib_transparent":
        tx = optax.contrib.sam(sgd, adv, sync_period=2)
    else:
        raise ValueError(kind)
    calls_per_step = 2 if kind == "contrib_transparent" else 1

    @jax.jit
    def run(params, state, x, y):
        def loss(p):
            return mlp_loss(p, x, y)

        def one_call(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            if kind == "optlab":
                u, s = tx.update(g, s, p, grad_fn=jax.grad(loss))
            elif kind == "contrib_opaque":
                u, s = tx.update(g, s, p, grad_fn=lambda q, _i: jax.grad(loss)(q))
            else:
                u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (params, state), _ = jax.lax.scan(
            one_call, (params, state), None, length=inner * calls_per_step
        )
        return params, state

    return tx, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=2, help="hidden layers")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--inner", type=int, default=20, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "sam.md"
    )
    args = parser.parse_args()

    sizes = [784] + [args.width] * args.depth + [10]
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (args.batch, 784))
    y = jax.random.randint(ky, (args.batch,), 0, 10)
    params = init_mlp(kp, sizes)
    n_params = sum(v.size for v in params.values())

    kinds = {
        "sgd": ("sgd (base)", 1),
        "optlab": ("optlab chain(sam_perturb, sgd)", 2),
        "contrib_opaque": ("optax.contrib.sam, opaque mode", 2),
        "contrib_transparent": ("optax.contrib.sam, transparent (2 calls)", 2),
    }
    runners = {k: make_runner(k, args.lr, args.rho, args.inner) for k in kinds}

    # Same math: the three SAM variants land on the same parameters.
    finals = {}
    for k in ("optlab", "contrib_opaque", "contrib_transparent"):
        tx, run = runners[k]
        finals[k] = run(params, tx.init(params), x, y)[0]
    for k in ("contrib_opaque", "contrib_transparent"):
        for name in params:
            np.testing.assert_allclose(
                np.asarray(finals[k][name]),
                np.asarray(finals["optlab"][name]),
                rtol=1e-5,
                atol=1e-6,
            )

    # Interleaved rounds (one call of each variant per round), so that load changes on a
    # shared machine hit every variant alike; the median over rounds per variant.
    compiled = {}
    for k, (tx, run) in runners.items():
        call_args = (params, tx.init(params), x, y)
        exe = run.lower(*call_args).compile()
        jax.block_until_ready(exe(*call_args))  # warm-up
        compiled[k] = (exe, call_args)
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for k, (exe, call_args) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(exe(*call_args))
            samples[k].append((time.perf_counter() - t0) / args.inner)
    times = {k: statistics.median(v) for k, v in samples.items()}
    for k, t in times.items():
        print(f"{kinds[k][0]:45s} {format_seconds(t)}/step (min {format_seconds(min(samples[k]))})")

    base = times["sgd"]
    opaque = times["contrib_opaque"]
    rows = [
        [kinds[k][0], kinds[k][1], format_seconds(t), t / base, t / opaque]
        for k, t in times.items()
    ]
    table = markdown_table(
        rows, ["variant", "grads/step", "time/step", "vs sgd", "vs optax.contrib.sam (opaque)"]
    )
    info = machine_info()
    cmd = "python benchmarks/sam.py " + " ".join(sys.argv[1:])
    ratio = times["optlab"] / base
    ratio_min = min(samples["optlab"]) / min(samples["sgd"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = "\n".join(
        [
            "## SAM step time",
            "",
            f"Command: `{cmd.strip()}`",
            "",
            f"MLP {'-'.join(map(str, sizes))} ({n_params:,} params), batch {args.batch}, float32; "
            f"{args.inner} steps per jitted call (lax.scan), median of {args.repeats} interleaved "
            "rounds, per step. Machine: "
            f"{info['cpu']}, {info['cores']} cores, {info['devices']}, jax {info['jax']}.",
            "",
            table,
            "",
            f"optlab SAM / SGD = {ratio:.2f}x of medians, {ratio_min:.2f}x of minima "
            f"(target <= 2.1x: {'met' if ratio <= 2.1 else 'NOT met'}); the three SAM variants "
            "reach the same parameters (checked, rtol 1e-5). 1-minute load average at the end: "
            f"{load:.1f} on {info['cores']} cores (on a shared machine the ratios move by about "
            "+-0.1 between runs).",
            "",
        ]
    )
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
