"""Time and accuracy of optlab's matrix kernels against the peers, in one process.

Run from the repository root::

    python benchmarks/kernels.py [--quick] [--out benchmarks/results/kernels.md]

Sections (each a markdown table; the same markdown goes to ``--out``):

1. This machine's float32 matmul rate (jitted ``2048 x 2048 @ 2048 x 2048``, median).
2. Orthogonalization (Muon's polar factor) of 256x256, 1024x1024, 1024x4096 and a stack of
   64 blocks of 128x128, float32: every ``optlab.linalg.orthogonalize`` method against
   ``optax.contrib``'s Newton-Schulz (5 steps, vmapped over the stack) and ``jnp.linalg.svd``
   (``U V^T``). Orthogonality error is ``max |sigma_i(Y V_r) - 1|`` where ``V_r`` spans the
   input's right singular vectors with ``sigma >= 1e-3 sigma_max`` (float64 reference), for a
   Gaussian input and for ``U diag(geomspace(1, 1e-3)) V^T``. Matmul-only methods also get
   ``time / (FLOPs / matmul rate)`` with their own FLOP count. A step sweep on 1024x4096 looks
   for optlab's fastest configuration that is as accurate as optax's.
3. Inverse p-th roots of SPD matrices: ``optlab.linalg.inverse_root`` (``auto``, ``eigh``,
   ``eigh64``, ``newton``) against precondition-opt's ``matrix_inverse_pth_root`` (coupled Newton,
   and its ``eigh=True`` variant) and a plain ``jnp.linalg.eigh`` root, with the relative Frobenius
   error against a float64 numpy ``eigh`` reference of ``(a + eps lambda_max I)^{-1/p}``.

Timing: ``benchmarks/_timing.py`` (ahead-of-time compile, ``block_until_ready``, median of
repeats after a warmup). The machine's other load is measured and printed: on a shared 2-core
machine it moves every number.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # benchmark this working tree's optlab

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from _timing import (  # noqa: E402
    OtherCpuLoad,
    format_seconds,
    machine_info,
    markdown_table,
    matmul_rate,
    time_fn_quiet,
)
from optax.contrib import _muon  # noqa: E402

import optlab  # noqa: E402
from optlab.linalg import inverse_root, orthogonalize, resolve_coefficients  # noqa: E402
from optlab.linalg.roots import resolve_method  # noqa: E402

#: Keller Jordan's quintic, as passed to optax.contrib's kernel.
OPTAX_NS_COEFFS = (3.4445, -4.7750, 2.0315)
OPTAX_NS_STEPS = 5
#: Singular values below this fraction of the input's sigma_max are left out of the error.
KEEP_REL = 1e-3
#: Two errors within this relative difference count as equal (float32 round-off level).
EQUAL_RTOL = 1e-2
#: Ridge for the inverse roots, relative to lambda_max in both libraries.
RIDGE_EPS = 1e-6
#: A measurement during which other processes kept more cores busy than this is retried and,
#: if it stays disturbed, marked with LOADED_MARK in the tables.
MAX_OTHER_CORES = 0.25
LOADED_MARK = "*"


# ----------------------------------------------------------------------------- peers


def import_precondition():
    """precondition-opt's distributed_shampoo, with removed ``jax.tree_*`` aliases shimmed.

    precondition-opt 0.3.0's ``distributed_shampoo`` module calls ``jax.tree_map``,
    ``jax.tree_flatten`` and ``jax.tree_unflatten``, which current JAX removed; the aliases
    are set here, inside this benchmark process only. (The module imports without them and
    ``matrix_inverse_pth_root`` itself calls none of them; its optimizer does.)
    Returns ``(module, version, shimmed names)`` or ``None``.
    """
    shimmed = []
    for name in ("tree_map", "tree_flatten", "tree_unflatten"):
        if not hasattr(jax, name):
            setattr(jax, name, getattr(jax.tree_util, name))
            shimmed.append(f"jax.{name}")
    try:
        from importlib.metadata import version

        from precondition import distributed_shampoo
    except ImportError:
        return None
    # Its float64 casts truncate to float32 without jax_enable_x64; each emits a warning.
    warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
    return distributed_shampoo, version("precondition-opt"), shimmed


def optax_newton_schulz(x):
    """optax.contrib's 5-step Newton-Schulz on ``[..., m, n]`` (vmapped over leading dims)."""
    coeffs = jnp.array(OPTAX_NS_COEFFS, x.dtype)

    def one(m):
        return _muon.orthogonalize_via_newton_schulz(m, coeffs, OPTAX_NS_STEPS)

    for _ in range(x.ndim - 2):
        one = jax.vmap(one)
    return one(x)


def svd_polar(x):
    u, _, vt = jnp.linalg.svd(x, full_matrices=False)
    return jnp.matmul(u, vt, precision=jax.lax.Precision.HIGHEST)


# ------------------------------------------------------------------- orthogonalization


def ortho_inputs(shape, seed):
    """``{"gaussian": ..., "geometric": ...}`` float32 arrays of ``shape``."""
    rng = np.random.default_rng(seed)
    *batch, m, n = shape
    k = min(m, n)
    gauss = rng.standard_normal(shape, dtype=np.float32)
    u, _ = np.linalg.qr(rng.standard_normal((*batch, m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((*batch, n, k)))
    geo = (u * np.geomspace(1.0, KEEP_REL, k)) @ np.swapaxes(v, -1, -2)
    return {"gaussian": gauss, "geometric": geo.astype(np.float32)}


def kept_right_vectors(x):
    """Per matrix: float64 right singular vectors with ``sigma >= KEEP_REL sigma_max``."""
    m, n = x.shape[-2:]
    out = []
    for xi in x.reshape(-1, m, n).astype(np.float64):
        if m <= n:  # eigh of the small Gram matrix X X^T, then V = X^T U / sigma
            w, u = np.linalg.eigh(xi @ xi.T)
            keep = w >= KEEP_REL**2 * w[-1]
            out.append(xi.T @ u[:, keep] / np.sqrt(w[keep]))
        else:
            w, v = np.linalg.eigh(xi.T @ xi)
            out.append(v[:, w >= KEEP_REL**2 * w[-1]])
    return out


def orthogonality_error(y, vectors):
    """``max |sigma(Y V_r) - 1|`` over all matrices (``V_r`` from :func:`kept_right_vectors`)."""
    m, n = y.shape[-2:]
    worst = 0.0
    for yi, v in zip(np.asarray(y, np.float64).reshape(-1, m, n), vectors, strict=True):
        z = yi @ v
        s = np.sqrt(np.maximum(np.linalg.eigvalsh(z.T @ z), 0.0))
        worst = max(worst, float(np.max(np.abs(s - 1.0))))
    return worst


@dataclass
class OrthoConfig:
    label: str
    fn: Callable
    steps: int | None  # None: not an iteration
    flops: float | None  # None: not matmul-only
    optlab: bool
    polynomial: bool = False


def ns_flops(shape, steps, gram=False, normalization=True):
    *batch, m, n = shape
    k, big = min(m, n), max(m, n)
    if gram:
        per = 4 * k * k * big + (8 * steps - 6) * k**3
    else:
        per = steps * (4 * k * k * big + 2 * k**3)
    if normalization:  # Frobenius scaling (and optlab's ||A^2||_F scaling)
        per += 3 * m * n + 4 * k * k
    return float(per * int(np.prod(batch, dtype=np.int64)))


def optlab_config(shape, method, steps=None, coefficients=None):
    coeffs = resolve_coefficients(method, shape, steps, coefficients) if method != "svd" else ()
    t = len(coeffs)
    fn = jax.jit(
        functools.partial(orthogonalize, method=method, steps=steps, coefficients=coefficients)
    )
    label = f"optlab {method}"
    if coefficients is not None:
        label += f" ({coefficients} coeffs)"
    if method == "svd":
        return OrthoConfig(label, fn, None, None, True)
    gram = method == "gram_newton_schulz"
    return OrthoConfig(label, fn, t, ns_flops(shape, t, gram=gram), True, polynomial=True)


def ortho_configs(shape):
    return [
        OrthoConfig(
            "optax.contrib newton_schulz",
            jax.jit(optax_newton_schulz),
            OPTAX_NS_STEPS,
            ns_flops(shape, OPTAX_NS_STEPS),
            False,
            polynomial=True,
        ),
        optlab_config(shape, "newton_schulz"),
        optlab_config(shape, "polar_express"),
        optlab_config(shape, "gram_newton_schulz"),
        optlab_config(shape, "gram_newton_schulz", coefficients="polar_express"),
        optlab_config(shape, "svd"),
        OrthoConfig("jnp.linalg.svd (U V^T)", jax.jit(svd_polar), None, None, False),
    ]


def sweep_configs(shape, steps_list):
    out = []
    for steps in steps_list:
        out.append(optlab_config(shape, "newton_schulz", steps))
        out.append(optlab_config(shape, "polar_express", steps))
        out.append(optlab_config(shape, "gram_newton_schulz", steps))
        out.append(optlab_config(shape, "gram_newton_schulz", steps, "polar_express"))
    return out


@dataclass
class OrthoResult:
    config: OrthoConfig
    seconds: float
    compile_seconds: float
    other_cores: float
    err_gauss: float
    err_geo: float
    bound_ratio: float | None


class Measurer:
    """:func:`time_fn_quiet` with one budget, for the whole run, for waiting on a busy machine."""

    def __init__(self, wait_budget, **timing):
        self.wait_left = wait_budget
        self.waited = 0.0
        self.timing = timing

    def __call__(self, fn, *args):
        kw = dict(self.timing)
        if self.wait_left <= 0:
            kw["attempts"] = 1
        kw["max_wait"] = min(kw.get("max_wait", 30.0), max(self.wait_left, 0.0))
        result = time_fn_quiet(fn, *args, **kw)
        self.wait_left -= result.waited_seconds
        self.waited += result.waited_seconds
        return result


def timed(seconds, other_cores):
    return format_seconds(seconds) + (LOADED_MARK if other_cores > MAX_OTHER_CORES else "")


def run_ortho(configs, inputs, vectors, rate, measure):
    x = jnp.asarray(inputs["gaussian"])
    geo = jnp.asarray(inputs["geometric"])
    results = []
    for cfg in configs:
        seconds, compile_s, other, _ = measure(cfg.fn, x)
        err_g = orthogonality_error(cfg.fn(x), vectors["gaussian"])
        err_geo = orthogonality_error(cfg.fn(geo), vectors["geometric"])
        bound = seconds / (cfg.flops / rate) if cfg.flops is not None else None
        results.append(OrthoResult(cfg, seconds, compile_s, other, err_g, err_geo, bound))
        print(
            f"  {cfg.label:48s} steps={cfg.steps!s:4s} {timed(seconds, other):>10s} "
            f"err {err_g:.2e} / {err_geo:.2e}",
            flush=True,
        )
    return results


ORTHO_HEADERS = [
    "method",
    "steps",
    "time",
    "compile",
    "time / optax",
    "err gaussian",
    "err geometric",
    "GFLOP",
    "time / FLOP bound",
]


def ortho_rows(results, baseline_seconds):
    rows = []
    for r in results:
        c = r.config
        rows.append(
            [
                c.label,
                "" if c.steps is None else c.steps,
                timed(r.seconds, r.other_cores),
                format_seconds(r.compile_seconds),
                f"{r.seconds / baseline_seconds:.2f}",
                r.err_gauss,
                r.err_geo,
                "" if c.flops is None else f"{c.flops / 1e9:.3g}",
                "" if r.bound_ratio is None else f"{r.bound_ratio:.2f}",
            ]
        )
    return rows


def as_accurate(r, ref):
    return r.err_gauss <= ref.err_gauss * (1 + EQUAL_RTOL) and r.err_geo <= ref.err_geo * (
        1 + EQUAL_RTOL
    )


# ------------------------------------------------------------------------ inverse roots


def spd_matrices(kind, d, batch, seed):
    """float32 SPD test matrices ``[*batch, d, d]`` and a description."""
    rng = np.random.default_rng(seed)
    shape = (*batch, d, d)
    if kind == "cond1e4":
        q, _ = np.linalg.qr(rng.standard_normal(shape))
        a = (q * np.geomspace(1.0, 1e-4, d)) @ np.swapaxes(q, -1, -2)
        desc = "Q diag(geomspace(1, 1e-4)) Q^T (condition 1e4)"
    elif kind == "wishart4":
        g = rng.standard_normal((*batch, d, 4 * d))
        a = g @ np.swapaxes(g, -1, -2) / (4 * d)
        desc = "G G^T / 4d, G Gaussian d x 4d (Shampoo statistic of a wide layer, condition ~9)"
    elif kind == "wishart1":
        g = rng.standard_normal((*batch, d, d))
        a = g @ np.swapaxes(g, -1, -2) / d
        desc = "G G^T / d, G Gaussian d x d (near-singular statistic, condition ~1e6 after ridge)"
    else:
        raise ValueError(kind)
    a = 0.5 * (a + np.swapaxes(a, -1, -2))
    return a.astype(np.float32), desc


def reference_root(a, p):
    """float64 ``(a + eps lambda_max I)^{-1/p}`` of the float32 input, per matrix."""
    a = np.asarray(a, np.float64)
    a = 0.5 * (a + np.swapaxes(a, -1, -2))
    w, v = np.linalg.eigh(a)
    w = np.maximum(w, 0.0)
    w = w + RIDGE_EPS * w[..., -1:]
    return (v * w[..., None, :] ** (-1.0 / p)) @ np.swapaxes(v, -1, -2)


def relative_error(x, ref):
    x = np.asarray(x, np.float64)
    num = np.linalg.norm((x - ref).reshape(-1, *ref.shape[-2:]), axis=(-2, -1))
    den = np.linalg.norm(ref.reshape(-1, *ref.shape[-2:]), axis=(-2, -1))
    return float(np.max(num / den))


def eigh_root(a, p):
    """Plain ``jnp.linalg.eigh`` root with the same ridge semantics (eps * lambda_max)."""
    w, v = jnp.linalg.eigh(a)
    w = jnp.maximum(w, 0.0)
    w = w + RIDGE_EPS * w[..., -1:]
    return jnp.matmul(
        v * (w ** (-1.0 / p))[..., None, :],
        jnp.swapaxes(v, -1, -2),
        precision=jax.lax.Precision.HIGHEST,
    )


def batched(fn, ndim):
    for _ in range(ndim - 2):
        fn = jax.vmap(fn)
    return fn


@dataclass
class RootConfig:
    label: str
    fn: Callable  # a -> root (timed)
    reported: Callable | None  # a -> the method's own error estimate (not timed)


def root_configs(p, ndim, ds):
    auto = resolve_method("auto")
    auto_label = "float32 eigh or float64 eigh64 by condition estimate" if auto == "auto" else auto
    configs = []
    if ds is not None:
        # ridge_epsilon is relative to lambda_max (relative_matrix_epsilon=True, its default,
        # lambda_max from 100 power iterations), like optlab's eps; error_tolerance and
        # num_iters are its defaults (1e-6, 100), as Distributed Shampoo calls it.
        def pc(eigh):
            def one(m):
                return ds.matrix_inverse_pth_root(m, p, ridge_epsilon=RIDGE_EPS, eigh=eigh)

            root = jax.jit(batched(lambda m: one(m)[0], ndim))
            err = jax.jit(batched(lambda m: one(m)[1].inverse_pth_root_errors, ndim))
            return root, err

        configs += [
            RootConfig("precondition-opt coupled Newton", *pc(False)),
            RootConfig("precondition-opt eigh=True", *pc(True)),
        ]
    for method in ("auto", "eigh", "eigh64", "newton"):
        label = f"optlab {method}" + (f" (= {auto_label})" if method == "auto" else "")
        kw = dict(p=p, eps=RIDGE_EPS, eps_floor=0.0, method=method)
        configs.append(
            RootConfig(
                label,
                jax.jit(functools.partial(inverse_root, **kw)),
                jax.jit(lambda a, kw=kw: inverse_root(a, return_error=True, **kw).error),
            )
        )
    configs.append(
        RootConfig("jnp.linalg.eigh root", jax.jit(functools.partial(eigh_root, p=p)), None)
    )
    return configs


def true_residual(x, a, p):
    """float64 ``max |X^p (a + eps lambda_max I) - I|``, max over the stack."""
    x = np.asarray(x, np.float64)
    a = np.asarray(a, np.float64)
    a = 0.5 * (a + np.swapaxes(a, -1, -2))
    lam = np.linalg.eigvalsh(a)[..., -1]
    eye = np.eye(a.shape[-1])
    a_reg = a + RIDGE_EPS * lam[..., None, None] * eye
    r = np.linalg.matrix_power(x, p) @ a_reg - eye
    return float(np.max(np.abs(r)))


@dataclass
class RootResult:
    label: str
    seconds: float
    compile_seconds: float
    other_cores: float
    error: float
    residual: float
    reported: float | None


ROOT_HEADERS = [
    "method",
    "time",
    "compile",
    "time / precondition Newton",
    "rel. error",
    "residual",
    "reported error",
]


def run_roots(case, ds, measure):
    kind, d, batch, p = case
    a, desc = spd_matrices(kind, d, batch, seed=d + p)
    ref = reference_root(a, p)
    x = jnp.asarray(a)
    results = []
    for cfg in root_configs(p, x.ndim, ds):
        seconds, compile_s, other, _ = measure(cfg.fn, x)
        root = cfg.fn(x)
        reported = None if cfg.reported is None else float(jnp.max(cfg.reported(x)))
        results.append(
            RootResult(
                cfg.label,
                seconds,
                compile_s,
                other,
                relative_error(root, ref),
                true_residual(root, a, p),
                reported,
            )
        )
        print(
            f"  {cfg.label:36s} {timed(seconds, other):>10s} err {results[-1].error:.2e}",
            flush=True,
        )
    return desc, results


def root_rows(results):
    base = results[0].seconds if results[0].label.startswith("precondition-opt coupled") else None
    rows = []
    for r in results:
        ratio = "" if base is None else f"{r.seconds / base:.2f}"
        rows.append(
            [
                r.label,
                timed(r.seconds, r.other_cores),
                format_seconds(r.compile_seconds),
                ratio,
                r.error,
                r.residual,
                r.reported,
            ]
        )
    return rows


# ----------------------------------------------------------------------------- main


def shape_rates(measure, quick):
    """Matmul rates (GFLOP/s) at the shapes the orthogonalization kernels multiply."""
    cases = [
        ("256x256 @ 256x256", (256, 256), (256, 256)),
        ("64 x (128x128 @ 128x128)", (64, 128, 128), (64, 128, 128)),
    ]
    if not quick:
        cases[1:1] = [
            ("1024x1024 @ 1024x1024", (1024, 1024), (1024, 1024)),
            ("1024x1024 @ 1024x4096", (1024, 1024), (1024, 4096)),
            ("1024x4096 @ 4096x1024 (X X^T)", (1024, 4096), None),
        ]
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    gram = jax.jit(lambda a: jnp.matmul(a, a.T, precision=jax.lax.Precision.HIGHEST))
    rows = []
    rng = np.random.default_rng(0)
    for label, sa, sb in cases:
        a = jnp.asarray(rng.standard_normal(sa, dtype=np.float32))
        if sb is None:
            t = measure(gram, a)
            flops = 2 * sa[0] * sa[0] * sa[1]
        else:
            b = jnp.asarray(rng.standard_normal(sb, dtype=np.float32))
            t = measure(mm, a, b)
            flops = 2 * int(np.prod(sa)) * sb[-1]
        mark = LOADED_MARK if t.other_cores > MAX_OTHER_CORES else ""
        rows.append([label, f"{flops / t.seconds / 1e9:.1f}{mark}"])
    return rows


def shape_name(shape):
    *batch, m, n = shape
    return (f"{batch[0]} x " if batch else "") + f"{m}x{n}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only (under a minute)")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the markdown report to this file"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    md: list[str] = []

    def emit(text=""):
        print(text, flush=True)
        md.append(text)

    max_seconds = 3.0 if args.quick else 12.0
    min_seconds = 0.25 if args.quick else 1.0
    attempts = 2 if args.quick else 3
    max_wait = 5.0 if args.quick else 60.0
    wait_budget = 20.0 if args.quick else 600.0
    measure = Measurer(
        wait_budget,
        repeats=args.repeats,
        warmup=1,
        min_repeats=3,
        max_seconds=max_seconds,
        min_seconds=min_seconds,
        max_repeats=50,
        max_other_cores=MAX_OTHER_CORES,
        attempts=attempts,
        max_wait=max_wait,
    )
    info = machine_info()
    pc = import_precondition()
    ds = pc[0] if pc else None

    with OtherCpuLoad() as total_load:
        emit("# optlab kernel benchmarks")
        emit()
        cmd = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
        emit(f"Command: `{cmd}`" + (" (quick: small shapes only)" if args.quick else ""))
        emit()
        emit(
            f"Machine: {info['cores']} cores ({info['cpu']}), backend `{info['backend']}` "
            f"({info['devices']}), Python {info['python']}, jax {info['jax']}, "
            f"jaxlib {info['jaxlib']}, optax {optax.__version__}, "
            f"optlab {getattr(optlab, '__version__', '?')}, "
            + (
                f"precondition-opt {pc[1]} (shimmed: {', '.join(pc[2]) or 'nothing'})"
                if pc
                else "precondition-opt not installed (its rows are skipped)"
            )
            + "."
        )
        emit()
        emit(
            "Timing: jitted and compiled ahead of time (`compile` = lower + compile), then "
            f"the median of {args.repeats} runs after 1 warmup, `block_until_ready` on each; "
            f"fast cases repeat until {min_seconds:g} s of runs (at most 50), slow ones stop "
            f"after 3 runs once past {max_seconds:g} s. This machine is shared: a measurement "
            f"during which other processes kept more than {MAX_OTHER_CORES:g} cores busy is "
            f"repeated after waiting up to {max_wait:g} s for the machine to quieten (up to "
            f"{attempts} attempts, {wait_budget:g} s of waiting per run; the least disturbed "
            "attempt is kept) and, if "
            f"still disturbed, marked `{LOADED_MARK}`. float32 throughout."
        )
        emit()

        # 1. matmul rate
        gflops, rate_timing = matmul_rate(2048, attempts=attempts, details=True)
        rate = gflops * 1e9
        rate_text = f"{gflops:.1f}" + (
            LOADED_MARK if rate_timing.other_cores > MAX_OTHER_CORES else ""
        )
        emit("## Matmul rate")
        emit()
        emit(
            f"Jitted 2048x2048 @ 2048x2048 float32: **{rate_text} GFLOP/s** (other "
            f"processes kept {rate_timing.other_cores:.2f} cores busy meanwhile); the FLOP "
            "bounds below "
            "use this rate. Measured again at the end of the run (last section). For "
            "context, the rate of the products the kernels are made of:"
        )
        emit()
        emit(markdown_table(shape_rates(measure, args.quick), ["product", "GFLOP/s"]))
        emit()

        # 2. orthogonalization
        shapes = (
            [(256, 256), (64, 128, 128)]
            if args.quick
            else [(256, 256), (1024, 1024), (1024, 4096), (64, 128, 128)]
        )
        sweep_shape = (1024, 4096)
        emit("## Orthogonalization (polar factor U V^T)")
        emit()
        emit(
            "Error: max |sigma_i(Y V_r) - 1| with V_r the input's right singular vectors "
            f"of sigma >= {KEEP_REL:g} sigma_max (float64), for a Gaussian input "
            "(`err gaussian`) and for U diag(geomspace(1, 1e-3)) V^T (`err geometric`); "
            "max over the stack. `time / FLOP bound` = time / (FLOPs / measured 2048 "
            "matmul rate), FLOPs per matrix T (4 k^2 K + 2 k^3) for Newton-Schulz and Polar "
            "Express, 4 k^2 K + (8T - 6) k^3 for Gram Newton-Schulz (k = min(m, n), "
            "K = max(m, n)), plus the normalization. `time / optax` < 1 is faster."
        )
        emit()
        by_shape = {}
        with OtherCpuLoad() as ortho_load:
            for shape in shapes:
                print(f"orthogonalize {shape}", flush=True)
                inputs = ortho_inputs(shape, seed=sum(shape))
                vectors = {k: kept_right_vectors(v) for k, v in inputs.items()}
                results = run_ortho(ortho_configs(shape), inputs, vectors, rate, measure)
                base = results[0]
                emit(f"### {shape_name(shape)} float32")
                emit()
                emit(markdown_table(ortho_rows(results, base.seconds), ORTHO_HEADERS))
                emit()
                if shape == sweep_shape and not args.quick:
                    steps = [3, 4, 5, 6]
                    print(f"sweep {shape} steps {steps}", flush=True)
                    sweep = run_ortho(sweep_configs(shape, steps), inputs, vectors, rate, measure)
                    emit(
                        f"Step sweep, {shape_name(shape)} (optlab methods with fewer steps "
                        "than their default):"
                    )
                    emit()
                    emit(markdown_table(ortho_rows(sweep, base.seconds), ORTHO_HEADERS))
                    emit()
                else:
                    sweep = []
                by_shape[shape] = (results, sweep)
        emit(
            f"Other processes kept {ortho_load.cores:.2f} cores busy during this section "
            f"({ortho_load.seconds:.0f} s)."
        )
        emit()

        # 3. inverse roots
        emit("## Inverse p-th roots (a + eps lambda_max I)^{-1/p}")
        emit()
        emit(
            f"eps = {RIDGE_EPS:g} relative to lambda_max in every method (optlab `eps`, "
            "precondition-opt `ridge_epsilon` with its default relative_matrix_epsilon=True; "
            "optlab `eps_floor=0`). Error: relative Frobenius error against float64 numpy "
            "eigh of the same float32 matrix with the exact lambda_max, max over the stack. "
            "`residual`: max |X^p (a + eps lambda_max I) - I| in float64. `reported error`: "
            "the method's own error estimate (optlab `return_error=True`; precondition-opt's "
            "`inverse_pth_root_errors` metric). `time / precondition Newton` < 1 is faster."
        )
        emit()
        if args.quick:
            cases = [("cond1e4", 256, (), 4), ("cond1e4", 128, (64,), 4)]
        else:
            cases = [
                ("cond1e4", 256, (), 4),
                ("cond1e4", 1024, (), 4),
                ("cond1e4", 128, (64,), 4),
                ("cond1e4", 256, (), 2),
                ("cond1e4", 256, (), 3),
                ("wishart4", 1024, (), 4),
                ("wishart1", 1024, (), 4),
            ]
        root_results = {}
        with OtherCpuLoad() as root_load:
            for case in cases:
                kind, d, batch, p = case
                print(f"inverse_root {case}", flush=True)
                desc, results = run_roots(case, ds, measure)
                root_results[case] = results
                name = (f"{batch[0]} x " if batch else "") + f"{d}x{d}"
                emit(f"### {name}, p = {p}: {desc}")
                emit()
                emit(markdown_table(root_rows(results), ROOT_HEADERS))
                emit()
        emit(
            f"Other processes kept {root_load.cores:.2f} cores busy during this section "
            f"({root_load.seconds:.0f} s)."
        )
        emit()

        # 4. targets
        emit("## Targets")
        emit()
        for line in targets(by_shape, root_results, args.quick, rate_timing.other_cores):
            emit(f"- {line}")
        emit()

        gflops_end, end_timing = matmul_rate(2048, attempts=attempts, details=True)
        emit(
            f"Matmul rate at the end of the run: {gflops_end:.1f} GFLOP/s (start: "
            f"{gflops:.1f}; other processes kept {end_timing.other_cores:.2f} cores busy "
            "meanwhile)."
        )
        emit()

    emit(
        f"Wall time {time.perf_counter() - t_start:.0f} s (of which {measure.waited:.0f} s "
        f"waiting for a quiet machine); other processes kept {total_load.cores:.2f} of "
        f"{info['cores']} cores busy on average during the run."
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(md) + "\n")
        print(f"wrote {args.out}")


def disturbed(*other_cores):
    """Suffix for a target line that rests on a measurement taken under load."""
    if any(c > MAX_OTHER_CORES for c in other_cores):
        return (
            f" WARNING: rests on a measurement taken while other processes kept more than "
            f"{MAX_OTHER_CORES:g} cores busy (marked {LOADED_MARK}); not reliable."
        )
    return ""


def targets(by_shape, root_results, quick, rate_other_cores):
    lines = []
    big = (1024, 4096)
    if big in by_shape:
        main_results, sweep = by_shape[big]
        base = main_results[0]
        ok = [r for r in main_results + sweep if r.config.optlab and as_accurate(r, base)]
        if ok:
            best = min(ok, key=lambda r: r.seconds)
            speedup = base.seconds / best.seconds
            verdict = "PASS" if speedup >= 2.0 else "FAIL"
            lines.append(
                f"{verdict}: 1024x4096, optlab's fastest method with orthogonality error <= "
                f"optax's 5-step NS (both inputs, within {EQUAL_RTOL:.0%}) is "
                f"`{best.config.label}` ({best.config.steps} steps): "
                f"{format_seconds(best.seconds)} vs optax {format_seconds(base.seconds)}, "
                f"{speedup:.2f}x faster (target >= 2x); errors {best.err_gauss:.3g} / "
                f"{best.err_geo:.3g} vs optax {base.err_gauss:.3g} / {base.err_geo:.3g}."
                + disturbed(base.other_cores, best.other_cores)
            )
        else:
            lines.append("FAIL: 1024x4096, no optlab method is as accurate as optax's NS.")
        defaults = [r for r in main_results if r.config.optlab and as_accurate(r, base)]
        if defaults:
            best = min(defaults, key=lambda r: r.seconds)
            lines.append(
                f"(info) with default steps only: `{best.config.label}` "
                f"{base.seconds / best.seconds:.2f}x faster than optax."
            )
    else:
        lines.append("not measured: 1024x4096 orthogonalization target (--quick).")

    poly = [
        (shape, r)
        for shape, (rs, sweep) in by_shape.items()
        for r in rs + sweep
        if r.config.optlab and r.bound_ratio is not None
    ]
    if poly:
        shape, best = min(poly, key=lambda sr: sr[1].bound_ratio)
        verdict = "PASS" if best.bound_ratio <= 1.2 else "FAIL"
        if quick:
            verdict += " (quick run: small shapes only)"
        per_shape = ", ".join(
            f"{shape_name(s)} {min(r.bound_ratio for t, r in poly if t == s):.2f}" for s in by_shape
        )
        lines.append(
            f"{verdict}: a matmul-only optlab method within 1.2x of its FLOP bound: best is "
            f"`{best.config.label}` ({best.config.steps} steps) on {shape_name(shape)} at "
            f"{best.bound_ratio:.2f}x (best per shape: {per_shape})."
            + disturbed(rate_other_cores, best.other_cores)
        )

    for case, results in root_results.items():
        kind, d, batch, p = case
        if d != 1024 or batch or p != 4:
            continue
        base = results[0]
        if not base.label.startswith("precondition-opt coupled"):
            lines.append(f"not measured: inverse_root target ({kind}): precondition-opt missing.")
            continue
        auto = next(r for r in results if r.label.startswith("optlab auto"))
        speedup = base.seconds / auto.seconds
        err_ok = auto.error <= base.error * (1 + EQUAL_RTOL)
        verdict = "PASS" if speedup >= 3.0 and err_ok else "FAIL"
        lines.append(
            f"{verdict}: d=1024 p=4 ({kind}), inverse_root(method='auto') vs precondition-opt "
            f"coupled Newton: {speedup:.2f}x faster (target >= 3x), rel. error "
            f"{auto.error:.2e} vs {base.error:.2e} "
            f"({'equal or better' if err_ok else 'WORSE'})."
            + disturbed(base.other_cores, auto.other_cores)
        )
        newton = next(r for r in results if r.label == "optlab newton")
        lines.append(
            f"(info) same case, inverse_root(method='newton'): "
            f"{base.seconds / newton.seconds:.2f}x faster than precondition-opt's Newton, "
            f"rel. error {newton.error:.2e}."
        )
    if quick:
        lines.append("not measured: d=1024 inverse_root target (--quick).")
    return lines


if __name__ == "__main__":
    main()
