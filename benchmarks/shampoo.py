"""Shampoo step time and compile time: optlab.shampoo vs precondition-opt vs optax.adamw.

Parameter set: the transformer-shaped set of ``benchmarks/muon.py`` (vocab 8192, d_model 512,
4 blocks with 512 x 512 attention projections and a 512 x 2048 / 2048 x 512 MLP, LayerNorms,
untied 8192 x 512 embedding and 512 x 8192 head; 21.2 M float32 parameters).

Matched settings (issue 5): block size 1024, roots recomputed every 10 steps, statistics every
step, beta2 0.999, relative ridge 1e-6, RMSProp grafting, momentum 0.9 (no Nesterov), both
libraries preconditioning every block (precondition-opt's ``skip_preconditioning_dim_size_gt``
is raised to 8192 so that the embedding and head blocks are preconditioned as optlab does).

Gradients (``--grads``): ``transformer`` (default) cycles through 10 real gradients of a causal
transformer with exactly these parameters on Zipf-distributed token batches
(``benchmarks/_workloads.py``); ``gaussian`` repeats one fixed Gaussian gradient (scale 1e-3)
every step. The peer's root step depends on them: its coupled Newton iteration runs until its
error stops improving, up to 100 iterations per block, and ill-conditioned statistics take
more; optlab's eigh costs the same for any matrix.

What is timed: one jitted step ``(params, state, grads) -> (params, state)``, compiled ahead of time
(the compile time reported). Then ``--window`` consecutive steps are timed one by one, which covers
exactly one root computation for a window of 10: ``plain`` is the median of the steps without a root
computation, ``root`` the slowest step, ``amortized`` the mean over the window. precondition-opt
0.3.0 needs ``jax.tree_map`` and friends shimmed from ``jax.tree_util`` on current JAX; that is done
inside this process only.

Run::

    python benchmarks/shampoo.py [--grads transformer|gaussian] [--out FILE] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import machine_info, markdown_table  # noqa: E402
from _workloads import random_like, transformer_gradients, transformer_params  # noqa: E402
from kernels import import_precondition  # noqa: E402

import optlab  # noqa: E402

LR = 1e-3
EVERY = 10


def step_fn(tx: optax.GradientTransformation):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def measure(
    name: str, tx: optax.GradientTransformation, params: Any, grads: list[Any], window: int
) -> dict[str, Any]:
    state = tx.init(params)
    t0 = time.perf_counter()
    compiled = step_fn(tx).lower(params, state, grads[0]).compile()
    compile_s = time.perf_counter() - t0
    params = jax.tree.map(lambda x: x.copy(), params)
    # One step first, so the window starts after any start-up root computation.
    params, state = compiled(params, state, grads[0])
    jax.block_until_ready(params)
    times = []
    for i in range(window):
        t0 = time.perf_counter()
        params, state = compiled(params, state, grads[(i + 1) % len(grads)])
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - t0)
        print(f"  {name}: step {len(times)}/{window} {times[-1]:.3f} s", flush=True)
    ordered = sorted(times)
    return {
        "name": name,
        "compile": compile_s,
        "plain": statistics.median(ordered[:-1]) if window > 1 else ordered[0],
        "root": ordered[-1],
        "amortized": sum(times) / len(times),
    }


def configs(quick: bool) -> list[tuple[str, optax.GradientTransformation]]:
    out = [("optax.adamw", optax.adamw(LR, b1=0.9, b2=0.999))]
    for method in ("auto",):
        out.append(
            (
                f"optlab.shampoo (root_method={method})",
                optlab.shampoo(
                    LR,
                    b1=0.9,
                    b2=0.999,
                    eps=1e-6,
                    block_size=1024,
                    precondition_every=EVERY,
                    start_preconditioning_step=1,
                    grafting="rmsprop",
                    root_method=method,
                ),
            )
        )
    pc = import_precondition()
    if pc is not None:
        ds = pc[0]
        out.append(
            (
                "precondition-opt distributed_shampoo",
                ds.distributed_shampoo(
                    LR,
                    block_size=1024,
                    beta1=0.9,
                    beta2=0.999,
                    matrix_epsilon=1e-6,
                    start_preconditioning_step=1,
                    preconditioning_compute_steps=EVERY,
                    statistics_compute_steps=1,
                    graft_type=ds.GraftingType.RMSPROP,
                    nesterov=False,
                    skip_preconditioning_dim_size_gt=8192,
                    generate_training_metrics=False,
                ),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/shampoo.md")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 block, vocab 1024 (a smoke test; numbers not comparable)",
    )
    parser.add_argument("--window", type=int, default=EVERY)
    parser.add_argument(
        "--grads",
        choices=("transformer", "gaussian"),
        default="transformer",
        help="real transformer gradients (10, cycled) or one fixed Gaussian",
    )
    args = parser.parse_args(argv)
    params = transformer_params(vocab=1024, n_blocks=1) if args.quick else transformer_params()
    if args.grads == "transformer":
        print("computing 10 transformer gradients", flush=True)
        grads = transformer_gradients(params, count=10, seed=1)
    else:
        grads = [random_like(params, seed=1, scale=1e-3)]
    results = []
    for name, tx in configs(args.quick):
        print(name, flush=True)
        results.append(measure(name, tx, params, grads, args.window))
    by_name = {r["name"]: r for r in results}
    peer = by_name.get("precondition-opt distributed_shampoo")
    adamw = by_name["optax.adamw"]
    rows = []
    for r in results:
        rows.append(
            [
                r["name"],
                f"{r['compile']:.2f}",
                f"{r['plain'] * 1e3:.0f}",
                f"{r['root'] * 1e3:.0f}",
                f"{r['amortized'] * 1e3:.0f}",
                f"{r['amortized'] / peer['amortized']:.3f}" if peer else "-",
                f"{r['compile'] / peer['compile']:.2f}" if peer else "-",
                f"{r['amortized'] / adamw['amortized']:.1f}",
                f"{r['compile'] / adamw['compile']:.1f}",
            ]
        )
    headers = [
        "optimizer",
        "compile s",
        "plain step ms",
        "root step ms",
        "amortized ms",
        "amortized / precondition-opt",
        "compile / precondition-opt",
        "amortized / adamw",
        "compile / adamw",
    ]
    lines = [
        f"## Shampoo: optlab vs precondition-opt (transformer-shaped parameters, "
        f"{args.grads} gradients)",
        "",
        f"Command: `python benchmarks/shampoo.py --grads {args.grads} --out {args.out}"
        f"{' --quick' if args.quick else ''}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()),
        "",
        markdown_table(rows, headers),
        "",
    ]
    if peer:
        default = by_name["optlab.shampoo (root_method=auto)"]
        ok_step = default["amortized"] <= 0.1 * peer["amortized"]
        ok_compile = default["compile"] <= 0.5 * peer["compile"]
        lines += [
            f"- {'PASS' if ok_step else 'FAIL'}: optlab amortized step "
            f"{default['amortized'] / peer['amortized']:.3f}x precondition-opt's (target <= 0.1x)",
            f"- {'PASS' if ok_compile else 'FAIL'}: optlab compile "
            f"{default['compile'] / peer['compile']:.2f}x precondition-opt's (target <= 0.5x)",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
