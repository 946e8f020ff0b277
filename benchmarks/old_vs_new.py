"""Shampoo and Muon compile and step time of the optlab tree on ``PYTHONPATH`` (old vs new).

To compare two commits, check each out in a worktree and run this script alternately on both
(same machine, same load), e.g.::

    git worktree add /tmp/old af67a56
    for tree in /tmp/old . /tmp/old .; do
        PYTHONPATH=$tree python benchmarks/old_vs_new.py shampoo --label $tree --out times.jsonl
    done

Workload: the transformer-shaped parameter set of ``benchmarks/muon.py`` (21.2 M float32
parameters) and 4 real gradients of it (``benchmarks/_workloads.py``). Shampoo as in
``benchmarks/shampoo.py`` (block 1024, roots every 10 steps from step 1, beta2 0.999, ridge
1e-6, RMSProp grafting, momentum 0.9); Muon at lr 0.02 with AdamW at 1e-3 on the rest. One
jitted step ``(params, state, grads) -> (params, state)`` with donation, lowered and compiled
ahead of time (``compile``: wall, ``compile_cpu``: process CPU time), then a window of steps
(10 for Shampoo: exactly one root step, ``max``; 8 for Muon): ``plain`` is the median without
the slowest. One JSON line per run goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import optax  # noqa: E402
from _workloads import init_transformer, transformer_gradients, transformer_params  # noqa: E402

import optlab  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("shampoo", "muon"))
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    params = init_transformer(transformer_params(), 0)
    grads = transformer_gradients(params, 4, 1)
    if args.which == "shampoo":
        tx = optlab.shampoo(1e-3, b1=0.9, b2=0.999, eps=1e-6, block_size=1024,
                            precondition_every=10, start_preconditioning_step=1,
                            grafting="rmsprop")  # fmt: skip
        window = 10
    else:
        tx = optlab.muon(0.02, adam_learning_rate=1e-3)
        window = 8

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    wall, cpu = time.perf_counter(), time.process_time()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads[0]).compile()
    compile_s, compile_cpu = time.perf_counter() - wall, time.process_time() - cpu
    params = jax.tree.map(lambda x: x.copy(), params)
    params, state = compiled(params, state, grads[0])
    jax.block_until_ready(params)
    times = []
    for i in range(window):
        wall = time.perf_counter()
        params, state = compiled(params, state, grads[(i + 1) % len(grads)])
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - wall)
    ordered = sorted(times)
    result = {
        "label": args.label,
        "which": args.which,
        "optlab": optlab.__file__,
        "compile": round(compile_s, 3),
        "compile_cpu": round(compile_cpu, 3),
        "plain": round(statistics.median(ordered[:-1]), 4),
        "max": round(ordered[-1], 3),
    }
    print(json.dumps(result))
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
