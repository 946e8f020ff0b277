"""SOAP step time and compile time: optlab.soap vs optlab.shampoo vs optax.adamw vs psgd-jax kron.

Parameter set: the transformer-shaped set of ``benchmarks/shampoo.py`` (vocab 8192, d_model 512,
4 blocks with 512 x 512 attention projections and a 512 x 2048 / 2048 x 512 MLP, LayerNorms,
untied 8192 x 512 embedding and 512 x 8192 head; 21.2 M float32 parameters).

Matched settings: block size 1024 for both optlab methods, statistics every step, bases (SOAP)
and roots (Shampoo) refreshed every 10 steps, every block preconditioned (no axis above
``max_preconditioned_dim``). optlab.soap at the reference's betas (0.95, 0.95), no weight decay;
optlab.shampoo as in ``benchmarks/shampoo.py`` (beta2 0.999, ridge 1e-6, RMSProp grafting,
momentum 0.9, roots from step 1). psgd-jax's ``kron`` (Li's PSGD with Kronecker-factored
triangular preconditioners, Evan Walters' JAX implementation) at its defaults except
``preconditioner_update_probability = 1/10``: the same mean refresh period (its updates are
drawn at random, from a key fixed inside it; its preconditioner is applied every step).
psgd-jax 0.2.9 imports ``optax._src.clipping``, which optax 0.2.8 moved to
``optax.transforms._clipping``; the alias is set inside this process only.

Gradients (``--grads``): ``transformer`` (default) cycles through 10 real gradients of a causal
transformer with exactly these parameters (``benchmarks/_workloads.py``); ``gaussian`` repeats
one fixed Gaussian gradient (scale 1e-3).

What is timed (as ``benchmarks/shampoo.py``): one jitted step ``(params, state, grads) ->
(params, state)``, compiled ahead of time (the compile time reported). One untimed step first
(SOAP's initializing ``eigh``), then ``--window`` consecutive steps timed one by one, which covers
exactly one refresh for a window of 10: ``plain`` is the median of the other steps, ``refresh``
the slowest step, ``amortized`` the mean over the window.

Run::

    python benchmarks/soap.py [--grads transformer|gaussian] [--out FILE] [--quick]
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
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import machine_info, markdown_table  # noqa: E402
from _workloads import random_like, transformer_gradients, transformer_params  # noqa: E402

import optlab  # noqa: E402

LR = 1e-3
EVERY = 10


def import_psgd():
    """psgd-jax's ``kron`` and its version, or None when it is not installed."""
    try:
        import optax.transforms._clipping as clipping

        # psgd-jax 0.2.9 imports the module from its pre-0.2.8 place (it uses nothing from it).
        sys.modules.setdefault("optax._src.clipping", clipping)
        from importlib.metadata import version

        from psgd_jax.kron import kron
    except ImportError:
        return None
    return kron, version("psgd-jax")


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
    # One step first, so the window starts after SOAP's initializing eigh.
    params, state = compiled(params, state, grads[0])
    jax.block_until_ready(params)
    times, cpu = [], []
    for i in range(window):
        t0, c0 = time.perf_counter(), time.process_time()
        params, state = compiled(params, state, grads[(i + 1) % len(grads)])
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        print(f"  {name}: step {len(times)}/{window} {times[-1]:.3f} s", flush=True)
    ordered = sorted(times)
    return {
        "name": name,
        "compile": compile_s,
        "plain": statistics.median(ordered[:-1]) if window > 1 else ordered[0],
        "refresh": ordered[-1],
        "amortized": sum(times) / len(times),
        # The process's CPU time (all its threads): what the step costs, whatever else the
        # shared machine runs at the same time (wall times above include others' load).
        "amortized_cpu": sum(cpu) / len(cpu),
    }


SOAP = "optlab.soap"
SHAMPOO = "optlab.shampoo"
ADAMW = "optax.adamw"


def configs() -> list[tuple[str, optax.GradientTransformation]]:
    out = [
        (ADAMW, optax.adamw(LR, b1=0.9, b2=0.999)),
        (
            SHAMPOO,
            optlab.shampoo(
                LR,
                b1=0.9,
                b2=0.999,
                eps=1e-6,
                block_size=1024,
                precondition_every=EVERY,
                start_preconditioning_step=1,
                grafting="rmsprop",
            ),
        ),
        (
            SOAP,
            optlab.soap(
                LR,
                b1=0.95,
                b2=0.95,
                weight_decay=0.0,
                block_size=1024,
                precondition_every=EVERY,
            ),
        ),
    ]
    psgd = import_psgd()
    if psgd is not None:
        kron, version = psgd
        out.append(
            (
                f"psgd-jax {version} kron",
                kron(LR, b1=0.9, preconditioner_update_probability=1.0 / EVERY),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/soap.md")
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
    parser.add_argument("--only", default=None, help="comma-separated names to run (default: all)")
    args = parser.parse_args(argv)
    params = transformer_params(vocab=1024, n_blocks=1) if args.quick else transformer_params()
    if args.grads == "transformer":
        print("computing 10 transformer gradients", flush=True)
        grads = transformer_gradients(params, count=10, seed=1)
    else:
        grads = [random_like(params, seed=1, scale=1e-3)]
    results = []
    for name, tx in configs():
        if args.only and not any(n in name for n in args.only.split(",")):
            continue
        print(name, flush=True)
        results.append(measure(name, tx, params, grads, args.window))
    by_name = {r["name"]: r for r in results}
    shampoo, adamw = by_name.get(SHAMPOO), by_name.get(ADAMW)
    rows = []
    for r in results:
        rows.append(
            [
                r["name"],
                f"{r['compile']:.2f}",
                f"{r['plain'] * 1e3:.0f}",
                f"{r['refresh'] * 1e3:.0f}",
                f"{r['amortized'] * 1e3:.0f}",
                f"{r['amortized'] / shampoo['amortized']:.2f}" if shampoo else "-",
                f"{r['compile'] / shampoo['compile']:.2f}" if shampoo else "-",
                f"{r['amortized'] / adamw['amortized']:.1f}" if adamw else "-",
                f"{r['amortized_cpu'] * 1e3:.0f}",
                f"{r['amortized_cpu'] / shampoo['amortized_cpu']:.2f}" if shampoo else "-",
            ]
        )
    headers = [
        "optimizer",
        "compile s",
        "plain step ms",
        "refresh step ms",
        "amortized ms",
        "amortized / optlab.shampoo",
        "compile / optlab.shampoo",
        "amortized / adamw",
        "amortized CPU ms",
        "amortized CPU / optlab.shampoo",
    ]
    lines = [
        f"## SOAP: optlab.soap vs optlab.shampoo, optax.adamw, psgd-jax kron "
        f"(transformer-shaped parameters, {args.grads} gradients, refresh every {EVERY})",
        "",
        f"Command: `python benchmarks/soap.py --grads {args.grads} --out {args.out}"
        f"{' --quick' if args.quick else ''}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()),
        "",
        markdown_table(rows, headers),
        "",
    ]
    soap = by_name.get(SOAP)
    if soap and shampoo:
        for key, what in (("amortized", "wall"), ("amortized_cpu", "CPU")):
            ratio = soap[key] / shampoo[key]
            lines.append(
                f"- {'PASS' if ratio <= 1.2 else 'FAIL'}: optlab.soap amortized step ({what} "
                f"time) {ratio:.2f}x optlab.shampoo's at the same refresh period "
                "(target <= 1.2x)"
            )
        lines.append(f"- 1-minute load average at the end: {os.getloadavg()[0]:.1f}")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
