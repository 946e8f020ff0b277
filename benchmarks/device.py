"""Accelerator benchmark: optlab's kernels and full optimizer steps on one device (issue 18).

One command, at most about 8 minutes on one GPU; ``--smoke`` runs the same code on tiny shapes
on CPU in seconds (the test suite runs it: ``tests/test_benchmarks_device.py``).

Kernels, each in three precisions:

* ``float32``: ``jax.default_matmul_precision("float32")`` (full-precision products);
* ``tf32``: ``jax.default_matmul_precision("tensorfloat32")`` (TF32 tensor cores on NVIDIA
  GPUs since Ampere; identical to float32 on CPU);
* ``bfloat16``: the iteration in bfloat16 (``compute_dtype=jnp.bfloat16``; optax's
  Newton-Schulz on a bfloat16 input). Inverse roots have no bfloat16 path (their
  eigendecomposition and Newton iteration need float32), so that row is left out.

Kernel rows: :func:`optlab.linalg.orthogonalize` (``newton_schulz``, ``polar_express``,
``gram_newton_schulz``) against ``optax.contrib``'s Newton-Schulz (the kernel of
``optax.contrib.muon``: 5 steps of Keller Jordan's quintic, vmapped over a stack), on a square
matrix, a wide matrix and a stack of blocks; and :func:`optlab.linalg.inverse_root` (``eigh``,
``newton``, p = 4) on Shampoo-like statistics ``G G^T / n``. Errors: the orthogonalization's
``max |sigma_i - 1|`` (:func:`optlab.linalg.orthogonality_error`, exact SVD) and the inverse
root's residual estimate ``||X^p (A + r I) - I||`` (``return_error=True``).

Full steps: one jitted ``(params, state, grads) -> (params, state)`` step of optax.adamw,
optlab.muon (float32 and bfloat16 iteration), optlab.shampoo, optlab.soap and optlab.kfac on
the transformer parameter set of ``benchmarks/_workloads.py`` (vocab 8192, d_model 512, 4
blocks; 21.2 M float32 parameters) with fixed random gradients (K-FAC: fixed random
positive-definite factors as its ``curvature``). After one untimed step (SOAP's initial
eigendecomposition), ``--window`` consecutive steps are timed one by one with
``block_until_ready``: it covers one refresh of the roots / bases / inverses (every 10 steps for
Shampoo and SOAP, 5 for K-FAC), so ``plain`` is the median step, ``refresh`` the slowest and
``amortized`` the mean.

Output: ``benchmarks/results/device_<device kind>.json`` and ``.md`` (the device named from
``jax.devices()[0].device_kind``), or ``--out-dir``.

Run::

    python benchmarks/device.py                  # on the accelerator, ~5-8 minutes
    python benchmarks/device.py --smoke --out-dir /tmp/device_smoke   # CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import re
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
from optax.contrib import _muon

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import format_seconds, machine_info, markdown_table, time_fn  # noqa: E402
from _workloads import random_like, transformer_params  # noqa: E402

import optlab  # noqa: E402
from optlab.linalg import inverse_root, orthogonality_error, orthogonalize  # noqa: E402

#: optax.contrib.muon's Newton-Schulz: Keller Jordan's quintic, 5 steps.
OPTAX_NS_COEFFS = (3.4445, -4.7750, 2.0315)
OPTAX_NS_STEPS = 5
PRECISIONS = ("float32", "tf32", "bfloat16")
_MATMUL_PRECISION = {"float32": "float32", "tf32": "tensorfloat32", "bfloat16": "bfloat16"}
LR = 1e-3


def optax_newton_schulz(x: jax.Array) -> jax.Array:
    """optax.contrib's Newton-Schulz on ``[..., m, n]`` (vmapped over leading dims)."""
    coeffs = jnp.array(OPTAX_NS_COEFFS, x.dtype)

    def one(m: jax.Array) -> jax.Array:
        return _muon.orthogonalize_via_newton_schulz(m, coeffs, OPTAX_NS_STEPS)

    for _ in range(x.ndim - 2):
        one = jax.vmap(one)
    return one(x)


# -- kernels ---------------------------------------------------------------------------------------


def _timed(fn: Callable, *args: Any, precision: str, budget: float) -> tuple[float, float, Any]:
    """(median seconds, compile seconds, output) of ``jax.jit(fn)(*args)`` under the matmul
    precision of ``precision`` (traced under it, so the compiled products keep it)."""
    with jax.default_matmul_precision(_MATMUL_PRECISION[precision]):
        jitted = jax.jit(fn)
        seconds, compile_s = time_fn(jitted, *args, repeats=5, max_seconds=budget)
        out = jitted(*args)
    return seconds, compile_s, out


def orthogonalize_rows(shapes: list[tuple[int, ...]], budget: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for shape in shapes:
        x32 = jnp.asarray(rng.normal(size=shape), jnp.float32)
        for precision in PRECISIONS:
            bf16 = precision == "bfloat16"
            cases: list[tuple[str, Callable, jax.Array]] = [
                (
                    "optax.contrib newton_schulz",
                    optax_newton_schulz,
                    x32.astype(jnp.bfloat16) if bf16 else x32,
                )
            ]
            for method in ("newton_schulz", "polar_express", "gram_newton_schulz"):
                if bf16 and method == "gram_newton_schulz":
                    continue  # always iterates in float32 at least (optlab.linalg docs)

                def fn(x, method=method, bf16=bf16):
                    return orthogonalize(
                        x, method=method, compute_dtype=jnp.bfloat16 if bf16 else None
                    )

                cases.append((f"optlab {method}", fn, x32))
            base = None
            for name, fn, x in cases:
                seconds, compile_s, out = _timed(fn, x, precision=precision, budget=budget)
                base = seconds if base is None else base
                err = float(jnp.max(orthogonality_error(out.astype(jnp.float32))))
                rows.append(
                    {
                        "kernel": "orthogonalize",
                        "shape": "x".join(map(str, shape)),
                        "precision": precision,
                        "method": name,
                        "seconds": seconds,
                        "compile_seconds": compile_s,
                        "vs_optax": seconds / base,
                        "error": err,
                    }
                )
                print(
                    f"  orthogonalize {shape} {precision:8s} {name:30s} {seconds:.3e} s "
                    f"err {err:.2e}",
                    flush=True,
                )
    return rows


def inverse_root_rows(dims: list[tuple[int, ...]], budget: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    rows = []
    for shape in dims:
        *batch, d = shape
        g = rng.normal(size=(*batch, d, 4 * d))
        stats = jnp.asarray(g @ np.swapaxes(g, -1, -2) / (4 * d), jnp.float32)
        for precision in ("float32", "tf32"):
            for method in ("eigh", "newton"):

                def fn(a, method=method):
                    return inverse_root(a, 4, eps=1e-6, method=method, return_error=True)

                seconds, compile_s, out = _timed(fn, stats, precision=precision, budget=budget)
                err = float(jnp.max(out.error))
                rows.append(
                    {
                        "kernel": "inverse_root p=4",
                        "shape": "x".join(map(str, (*shape, d))),
                        "precision": precision,
                        "method": f"optlab {method}",
                        "seconds": seconds,
                        "compile_seconds": compile_s,
                        "vs_optax": float("nan"),
                        "error": err,
                    }
                )
                print(
                    f"  inverse_root {shape} {precision:8s} {method:8s} {seconds:.3e} s "
                    f"err {err:.2e}",
                    flush=True,
                )
    return rows


# -- full steps ------------------------------------------------------------------------------------


def curvature_for(params: dict[str, Any], seed: int) -> dict[str, optlab.KFACFactors]:
    """Fixed random factors for scale_by_kfac's default layers: ``X X^T / n`` (positive
    definite), an embedding's diagonal as uniform token frequencies."""
    key = jax.random.key(seed)
    out = {}
    paths = {
        "/".join(str(k.key) for k in path): x.shape
        for path, x in jax.tree_util.tree_leaves_with_path(params)
    }

    def psd(k: jax.Array, d: int) -> jax.Array:
        x = jax.random.normal(k, (d, 2 * d), jnp.float32)
        return x @ x.T / (2 * d)

    for path, shape in paths.items():
        parent, _, last = path.rpartition("/")
        key, ka, kg = jax.random.split(key, 3)
        if last == "kernel":
            d_in = shape[0] + (paths.get(f"{parent}/bias") == (shape[-1],))
            out[parent] = optlab.KFACFactors(psd(ka, d_in), psd(kg, shape[-1]))
        elif last == "embedding":
            out[parent] = optlab.KFACFactors(
                jnp.full((shape[0],), 1.0 / shape[0], jnp.float32), psd(kg, shape[1])
            )
    return out


def step_optimizers() -> list[tuple[str, Callable[[], optax.GradientTransformation]]]:
    return [
        ("optax.adamw", lambda: optax.adamw(LR)),
        ("optlab.muon", lambda: optlab.muon(0.02, adam_learning_rate=LR)),
        (
            "optlab.muon (bfloat16 iteration)",
            lambda: optlab.muon(0.02, adam_learning_rate=LR, compute_dtype=jnp.bfloat16),
        ),
        ("optlab.shampoo", lambda: optlab.shampoo(LR, precondition_every=10)),
        ("optlab.soap", lambda: optlab.soap(LR, precondition_every=10)),
        ("optlab.kfac", lambda: optlab.kfac(LR, damping=1e-3, precondition_every=5)),
    ]


def step_rows(params: dict[str, Any], window: int) -> list[dict[str, Any]]:
    params = jax.tree.map(lambda x: x + 0.01, params)
    grads = random_like(params, seed=2, scale=1e-3)
    curvature = curvature_for(params, seed=3)
    rows = []
    adamw_amortized = None
    for name, make in step_optimizers():
        tx = make()
        kfac = name == "optlab.kfac"

        def step(p, s, g, c, tx=tx, kfac=kfac):
            extra = {"curvature": c} if kfac else {}
            updates, s = tx.update(g, s, p, **extra)
            return optax.apply_updates(p, updates), s

        jitted = jax.jit(step, donate_argnums=(0, 1))
        p = jax.tree.map(jnp.copy, params)
        state = tx.init(p)
        t0 = time.perf_counter()
        compiled = jitted.lower(p, state, grads, curvature).compile()
        compile_s = time.perf_counter() - t0
        p, state = jax.block_until_ready(compiled(p, state, grads, curvature))  # untimed
        times = []
        for _ in range(window):
            t0 = time.perf_counter()
            p, state = jax.block_until_ready(compiled(p, state, grads, curvature))
            times.append(time.perf_counter() - t0)
        finite = bool(all(jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)))
        amortized = statistics.fmean(times)
        adamw_amortized = amortized if adamw_amortized is None else adamw_amortized
        rows.append(
            {
                "optimizer": name,
                "compile_seconds": compile_s,
                "plain_seconds": statistics.median(times),
                "refresh_seconds": max(times),
                "amortized_seconds": amortized,
                "vs_adamw": amortized / adamw_amortized,
                "finite": finite,
            }
        )
        print(
            f"  step {name:34s} amortized {amortized:.3e} s (compile {compile_s:.1f} s)", flush=True
        )
    return rows


# -- report ----------------------------------------------------------------------------------------


def slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "device"


def markdown(report: dict[str, Any]) -> str:
    kernel_rows = [
        [
            r["kernel"],
            r["shape"],
            r["precision"],
            r["method"],
            format_seconds(r["seconds"]),
            format_seconds(r["compile_seconds"]),
            r["vs_optax"],
            r["error"],
        ]
        for r in report["kernels"]
    ]
    step_rows_ = [
        [
            r["optimizer"],
            format_seconds(r["compile_seconds"]),
            format_seconds(r["plain_seconds"]),
            format_seconds(r["refresh_seconds"]),
            format_seconds(r["amortized_seconds"]),
            r["vs_adamw"],
            r["finite"],
        ]
        for r in report["steps"]
    ]
    m = report["machine"]
    return "\n".join(
        [
            f"## Device benchmark: {report['device_kind']}",
            "",
            f"Command: `{report['command']}`",
            "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()),
            "",
            f"Kernels (median of up to 5 jitted runs; `vs optax` = time / optax.contrib's "
            f"Newton-Schulz at the same shape and precision; error: max |sigma - 1| for "
            f"orthogonalization, the root's residual estimate for inverse roots). "
            f"Parameters: {report['parameters']:,} (transformer, {report['blocks']} blocks).",
            "",
            markdown_table(
                kernel_rows,
                [
                    "kernel",
                    "shape",
                    "precision",
                    "method",
                    "time",
                    "compile",
                    "vs optax",
                    "error",
                ],
            ),
            "",
            f"Full optimizer steps on the transformer parameter set ({report['window']} "
            "consecutive steps timed after one untimed step; `vs adamw` = amortized / "
            "optax.adamw's amortized):",
            "",
            markdown_table(
                step_rows_,
                [
                    "optimizer",
                    "compile",
                    "plain step",
                    "refresh step (max)",
                    "amortized",
                    "vs adamw",
                    "params finite",
                ],
            ),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, seconds")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--window", type=int, default=None, help="timed steps (default 10)")
    args = parser.parse_args(argv)
    if args.smoke:
        jax.config.update("jax_platforms", "cpu")
        # One stacked rectangular shape covers the stack, the transpose and every method.
        ortho_shapes: list[tuple[int, ...]] = [(2, 16, 48)]
        root_dims: list[tuple[int, ...]] = [(16,)]
        params = transformer_params(vocab=64, d=16, d_mlp=32, n_blocks=1)
        window, budget = args.window or 2, 0.2
    else:
        ortho_shapes = [(1024, 1024), (1024, 4096), (16, 512, 512)]
        root_dims = [(1024,), (16, 256)]
        params = transformer_params()
        window, budget = args.window or 10, 5.0
    device = jax.devices()[0]
    command = "python benchmarks/device.py" + (
        " " + " ".join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    print(f"device: {device.device_kind} ({device.platform})", flush=True)
    t0 = time.perf_counter()
    kernels = orthogonalize_rows(ortho_shapes, budget) + inverse_root_rows(root_dims, budget)
    steps = step_rows(params, window)
    report = {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "command": command,
        "smoke": args.smoke,
        "machine": machine_info(),
        "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
        "blocks": sum(1 for k in params if k.startswith("block_")),
        "window": window,
        "wall_seconds": time.perf_counter() - t0,
        "kernels": kernels,
        "steps": steps,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"device_{slug(device.device_kind)}{'_smoke' if args.smoke else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {stem}.json and {stem}.md ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
