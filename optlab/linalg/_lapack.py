"""Batched LAPACK factorizations (eigh, svd, qr) that cannot hang XLA's CPU runtime.

Every LAPACK call in optlab goes through this module: :func:`eigh`, :func:`svd` and :func:`qr`
in traced code; :func:`host_call` for a whole host computation on NumPy arrays (such as
``inverse_root``'s float64 path), with :func:`host_eigh`, :func:`host_svd` and :func:`host_qr`
for the factorizations there.

Why not ``jax.lax.linalg`` on CPU. jaxlib 0.10.0 to 0.11.0 split a batched CPU LAPACK call into
chunks that they schedule on XLA's intra-op thread pool, and block the pool thread running the
call until every chunk is done (``ParallelBatchMap`` in jaxlib/cpu/lapack_kernels.cc; 0.9.2 did
not split, and jax's sources after 0.11.0 no longer do outside Google's builds). That pool is
shared by all CPU devices of the process and has max(cores, devices) threads. When as many such
calls are in flight as the pool has threads, each thread waits for chunks that no thread is left
to run, and the program hangs for good. Two independent calls in one program do that on a
2-core machine (:func:`optlab.linalg._ordering.after` orders them), and so does a single call
per program once a jitted step runs on at least as many CPU devices as there are cores
(``--xla_force_host_platform_device_count``): every device runs its own copy of the program at
the same time, and nothing inside a program can order the copies. Shampoo's first root step hung
that way on 2 and on 8 devices of a 2-core machine. (Where it did not hang, the chunks that ran
called a multithreaded OpenBLAS from up to 8 threads at once on 2 cores, and a step took 10x to
100x longer.) ``jax.pure_callback`` is no way out as it stands: see :func:`host_call`.

What this module does instead. On CPU the whole batch goes to the host in a callback that runs
on the XLA thread reaching it (:func:`host_call`), and there to LAPACK: the routines jaxlib's
kernels call (SciPy's, through ctypes), matrix by matrix; when the BLAS is single-threaded, in
contiguous chunks over this module's own threads, as jaxlib split a batch over XLA's pool (so
one device keeps jaxlib's speed), but on threads that nothing else ever waits for. A
process-wide lock lets one host LAPACK call run at a time (it already uses every core; more at
once only oversubscribe them), and the holder waits for nothing but its own chunks: neither can
deadlock, whatever the number of devices or of concurrent calls. Under jit's automatic
sharding XLA runs a callback once, on one device, on the whole operand (gathered there, the
result broadcast back): replicated statistics are factored once instead of once per device.
Inside ``shard_map`` every device runs it on its own shard. Off CPU these functions are the
``jax.lax.linalg`` kernels (the operands stay on the accelerator).

Shared semantics: real matrices, batched over leading dimensions, computed in float32 at least
(float64 stays float64); :func:`eigh` reads only the lower triangle. A matrix with a non-finite
entry, or one on which LAPACK fails, gets NaN factors (as ``jax.lax.linalg`` reports failures)
rather than an exception inside a compiled function. Differentiable: the JVP rules are JAX's
formulas for these factorizations, evaluated from the computed factors.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import inspect
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax._src import callback as _jax_callback  # emit_python_callback: see host_call
from jax.interpreters import batching, mlir
from scipy.linalg import cython_lapack

__all__ = ["eigh", "host_call", "host_eigh", "host_qr", "host_svd", "on_cpu", "qr", "svd"]

# One host LAPACK call at a time in the whole process (module docstring).
_HOST_LOCK = threading.Lock()


def on_cpu() -> bool:
    """Whether traced code runs on CPU (``jax.default_backend()``, read at trace time)."""
    return jax.default_backend() == "cpu"


def host_call(fn: Callable[..., Any], result_shape_dtypes: Any, *args: Any) -> Any:
    """``fn(*args)`` on the host, on NumPy arrays, inside traced code; ``fn`` holds the lock.

    Like ``jax.pure_callback`` (``result_shape_dtypes`` a ShapeDtypeStruct or a tuple of them,
    ``fn`` pure and not calling back into JAX), but ``fn`` gets the operands as NumPy arrays
    straight from XLA. ``jax.pure_callback`` ``device_put``s them onto CPU device 0 first (jax
    0.9 to 0.11): when that copy is not a free alias it is a task for the PjRt client's thread
    pool, whose threads all sit blocked running the devices' programs once there are as many
    devices as threads, so a jitted step on 2 forced CPU devices of a 2-core machine hangs at
    its first callback. Under ``vmap`` unbatched operands are broadcast, and ``fn`` receives
    every operand with the batch axes in front.
    """
    single = not isinstance(result_shape_dtypes, (tuple, list))
    specs = (result_shape_dtypes,) if single else tuple(result_shape_dtypes)
    avals = tuple(jax.core.ShapedArray(tuple(r.shape), jnp.dtype(r.dtype)) for r in specs)
    outs = _host_p.bind(*(jnp.asarray(x) for x in args), callback=_Locked(fn), result_avals=avals)
    return outs[0] if single else tuple(outs)


class _Locked:
    """``fn`` under the host lock, returning a tuple (a primitive parameter: hashable)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, *host_args: np.ndarray) -> tuple[np.ndarray, ...]:
        with _HOST_LOCK:
            out = self.fn(*host_args)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


_host_p = jax.extend.core.Primitive("optlab_host_lapack")
_host_p.multiple_results = True


@_host_p.def_impl
def _host_impl(*args, callback, result_avals):
    del result_avals
    return [jnp.asarray(o) for o in callback(*(np.asarray(x) for x in args))]


@_host_p.def_abstract_eval
def _host_abstract_eval(*avals, callback, result_avals):
    del avals, callback
    return list(result_avals)


def _host_batching(args, dims, *, callback, result_avals):
    size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
    args = [
        jnp.broadcast_to(x, (size, *x.shape)) if d is None else jnp.moveaxis(x, d, 0)
        for x, d in zip(args, dims)
    ]
    avals = tuple(a.update(shape=(size, *a.shape)) for a in result_avals)
    return _host_p.bind(*args, callback=callback, result_avals=avals), [0] * len(avals)


batching.primitive_batchers[_host_p] = _host_batching


def _host_lowering(ctx, *args, callback, result_avals):
    del result_avals
    # JAX's own machinery for host callbacks (what jax.pure_callback lowers to), minus the
    # device_put (host_call's docstring). Under automatic sharding the callback runs once, on
    # one device (``_callback_op_sharding`` gives a maximal sharding); in shard_map, per device.
    sharding = _jax_callback._callback_op_sharding(
        ctx.module_context.axis_context, None, ctx.avals_out
    )
    extra = {"returns_token": False} if _RETURNS_TOKEN_ARG else {}
    results, _, _ = _jax_callback.emit_python_callback(
        ctx,
        callback,
        None,
        list(args),
        ctx.avals_in,
        ctx.avals_out,
        has_side_effect=False,
        sharding=sharding,
        **extra,
    )
    return results


_RETURNS_TOKEN_ARG = (
    "returns_token" in inspect.signature(_jax_callback.emit_python_callback).parameters
)
mlir.register_lowering(_host_p, _host_lowering, cacheable=False)


# -- host side -------------------------------------------------------------------------------------
# LAPACK through the function pointers that scipy.linalg.cython_lapack exports: the very
# routines jaxlib's CPU kernels call (jax and jaxlib depend on SciPy), in the input's precision,
# one matrix per call, called with ctypes, which releases the GIL while LAPACK runs (so host
# threads can factor chunks of a batch at the same time). SciPy's Python wrappers
# (scipy.linalg.lapack) hold the GIL throughout, and NumPy's linalg computes float32 in float64
# (twice the time).
_LAPACK_PREFIX = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}


@functools.cache
def _routine(name: str, n_args: int) -> Callable[..., None]:
    """The LAPACK routine ``name`` (e.g. ``"ssyevd"``); every argument is passed by address."""
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    capsule = cython_lapack.__pyx_capi__[name]
    address = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * n_args))(address)


def _call(name: str, dtype, *args: np.ndarray) -> None:
    """``<s|d>name(*args)``: arrays by address (scalars as 1-element arrays); raises
    ``LinAlgError`` when LAPACK's ``info`` (the last argument) is not 0."""
    _routine(_LAPACK_PREFIX[np.dtype(dtype)] + name, len(args))(*(x.ctypes.data for x in args))
    if args[-1][0] != 0:
        raise np.linalg.LinAlgError(f"LAPACK {name} failed (info = {int(args[-1][0])})")


def _i(v: int) -> np.ndarray:
    return np.array([v], np.int32)


def _c(c: str) -> np.ndarray:
    return np.frombuffer(c.encode(), np.uint8).copy()


def _workspace(
    name: str, dtype, head: Sequence[np.ndarray], tail: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """LAPACK's workspace query: ``name(*head, work, lwork=-1, *tail, info)``."""
    query = np.empty(1, dtype)
    _call(name, dtype, *head, query, _i(-1), *tail, _i(0))
    return np.empty(max(1, int(query[0])), dtype)


class _Bound:
    """A LAPACK routine with every argument bound by address (``info`` last, reset per call):
    the per-matrix cost of a call is then one ctypes call, however many arguments."""

    def __init__(self, name: str, dtype, *args: np.ndarray):
        self.name, self.args = name, args  # args: kept alive while their addresses are used
        self.info = np.zeros(1, np.int32)
        self.fn = _routine(_LAPACK_PREFIX[np.dtype(dtype)] + name, len(args) + 1)
        self.addresses = [x.ctypes.data for x in args] + [self.info.ctypes.data]

    def __call__(self) -> None:
        self.info[0] = 0
        self.fn(*self.addresses)
        if self.info[0] != 0:
            raise np.linalg.LinAlgError(f"LAPACK {self.name} failed (info = {self.info[0]})")


#: Host threads a batch may be split over: the cores this process may use, at most 16.
_WORKERS = max(
    1,
    min(
        16,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    ),
)
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
#: Work (~flops) below which a chunk is not worth a thread hop (~1 ms of one core).
_MIN_CHUNK_WORK = 2e6


@functools.cache
def _blas_threads_query() -> Callable[[], int] | None:
    """How many threads the BLAS under SciPy's LAPACK uses, if it says (OpenBLAS does)."""
    try:
        lib = ctypes.CDLL(cython_lapack.__file__)  # dlsym also searches its dependencies
    except OSError:
        return None
    for name in ("scipy_openblas_get_num_threads", "openblas_get_num_threads"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype, fn.argtypes = ctypes.c_int, []
            return fn
    return None


def _batch_threads() -> int:
    """Threads to split a batch over: all cores when the BLAS runs single-threaded (then it is
    jaxlib 0.10's split of a batch over XLA's pool, which on one device made it ~cores times
    faster), else 1: each LAPACK call then uses the BLAS's own threads, and several at once
    would only fight over the cores (OpenBLAS's threads spin; jaxlib's split of a batch over
    a multithreaded OpenBLAS ran 10x slower on a busy 2-core machine, and corrupted memory on
    hosts with hundreds of cores, jax issue #39292, which is why jax stopped it)."""
    query = _blas_threads_query()
    return _WORKERS if query is not None and query() == 1 else 1


OneMatrix = Callable[..., Sequence[np.ndarray]]


def _guarded(
    make_fn: Callable[[], OneMatrix],
    inputs: Sequence[np.ndarray],
    out_shapes: Sequence[tuple[int, ...]],
    dtype,
) -> tuple[np.ndarray, ...]:
    """``fn = make_fn()`` (one matrix) over the leading batch axis of ``inputs`` (``[b, ...]``).

    NaN outputs for a matrix with a non-finite input (LAPACK may loop long or return garbage
    on NaN) or on which LAPACK fails (``fn`` raises ``LinAlgError``); ``out_shapes`` are the
    per-matrix output shapes. ``make_fn`` runs once per chunk (so ``fn`` may reuse workspaces).
    When the BLAS is single-threaded the batch is split in contiguous chunks over host threads
    (:func:`_batch_threads`), on a pool of this module's own that nothing else ever waits on:
    one host LAPACK call runs at a time (the lock) and its chunks wait for nothing but a core.
    """
    global _POOL
    batch = inputs[0].shape[0]
    if batch == 0 or any(x.size == 0 for x in inputs):  # no matrices, or empty ones
        return tuple(np.empty((batch, *shape), dtype) for shape in out_shapes)
    m, n = inputs[0].shape[-2:]
    work = 10.0 * m * n * min(m, n)  # ~flops of one eigh or SVD (a QR: fewer)
    chunks = int(min(_batch_threads(), batch, max(1.0, batch * work // _MIN_CHUNK_WORK)))
    if chunks <= 1:
        return _guarded_chunk(make_fn, inputs, out_shapes, dtype)
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(_WORKERS, "optlab-lapack")
    bounds = np.linspace(0, batch, chunks + 1).astype(int)
    parts = list(
        _POOL.map(
            lambda lo_hi: _guarded_chunk(
                make_fn, [x[lo_hi[0] : lo_hi[1]] for x in inputs], out_shapes, dtype
            ),
            zip(bounds[:-1], bounds[1:]),
        )
    )
    return tuple(np.concatenate(outs) for outs in zip(*parts))


def _guarded_chunk(
    make_fn: Callable[[], OneMatrix],
    inputs: Sequence[np.ndarray],
    out_shapes: Sequence[tuple[int, ...]],
    dtype,
) -> tuple[np.ndarray, ...]:
    batch = inputs[0].shape[0]
    outs = tuple(np.full((batch, *shape), np.nan, dtype) for shape in out_shapes)
    finite = np.ones(batch, bool)
    for x in inputs:
        finite &= np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
    fn = make_fn()
    for i in np.flatnonzero(finite):
        try:
            for out, value in zip(outs, fn(*(x[i] for x in inputs))):
                out[i] = value
        except np.linalg.LinAlgError:
            pass  # this matrix stays NaN
    return outs


def _flat(a: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    a = np.asarray(a)
    return a.reshape(math.prod(a.shape[:-2]), *a.shape[-2:]), a.shape[:-2]


_V, _N, _S, _U = (_c(c) for c in "VNSU")


def _eigh_maker(n: int, dtype) -> Callable[[], OneMatrix]:
    """``syevd`` of one ``n x n`` matrix (its lower triangle): ``(w, v^T)``."""

    def make():
        a = np.empty((n, n), dtype, order="F")
        w = np.empty(n, dtype)
        lwork, liwork = 1 + 6 * n + 2 * n * n, 3 + 5 * n  # syevd's minimum with eigenvectors
        syevd = _Bound(
            "syevd",
            dtype,
            _V,
            _U,
            _i(n),
            a,
            _i(max(1, n)),
            w,
            np.empty(lwork, dtype),
            _i(lwork),
            np.empty(liwork, np.int32),
            _i(liwork),
        )

        def one(x):
            # x^T is Fortran-ordered as x lies in memory; its upper triangle is x's lower one.
            a[...] = x.T
            syevd()
            return w, a.T  # column-major eigenvectors read row-major: v^T, no transpose

        return one

    return make


def _svd_maker(m: int, n: int, dtype, compute_uv: bool) -> Callable[[], OneMatrix]:
    """Thin ``gesdd`` of one ``m x n`` matrix: ``(u, s, vt)`` or ``(s,)``."""
    k = min(m, n)

    def make():
        # The SVD of x^T (Fortran-ordered as x lies in memory): x^T = V S U^T, and LAPACK's
        # column-major V (n x k) and U^T (k x m) are, read row-major, x's vt and u.
        a = np.empty((n, m), dtype, order="F")
        s = np.empty(k, dtype)
        if compute_uv:
            vt, u, ld_v, ld_ut = np.empty((k, n), dtype), np.empty((m, k), dtype), n, k
        else:
            vt, u, ld_v, ld_ut = np.empty(1, dtype), np.empty(1, dtype), 1, 1
        head = (
            _S if compute_uv else _N,
            _i(n),
            _i(m),
            a,
            _i(max(1, n)),
            s,
            vt,
            _i(max(1, ld_v)),
            u,
            _i(max(1, ld_ut)),
        )
        iwork = np.empty(8 * k, np.int32)
        work = _workspace("gesdd", dtype, head, (iwork,))
        gesdd = _Bound("gesdd", dtype, *head, work, _i(len(work)), iwork)

        def one(x):
            a[...] = x.T
            gesdd()
            return (u, s, vt) if compute_uv else (s,)

        return one

    return make


def _qr_maker(m: int, n: int, dtype) -> Callable[[], OneMatrix]:
    """``geqrf`` and ``orgqr`` of one ``m x n`` matrix: reduced ``(q, r)``."""
    k = min(m, n)

    def make():
        a = np.empty((m, n), dtype, order="F")
        tau = np.empty(k, dtype)
        head_qr = (_i(m), _i(n), a, _i(max(1, m)), tau)
        head_q = (_i(m), _i(k), _i(k), a, _i(max(1, m)), tau)  # Q from a's first k columns
        work = max(
            (_workspace("geqrf", dtype, head_qr), _workspace("orgqr", dtype, head_q)), key=len
        )
        geqrf = _Bound("geqrf", dtype, *head_qr, work, _i(len(work)))
        orgqr = _Bound("orgqr", dtype, *head_q, work, _i(len(work)))

        def one(x):
            a[...] = x
            geqrf()
            r = np.triu(a[:k, :])
            orgqr()
            return a[:, :k], r

        return one

    return make


def _host_eigh_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`host_eigh` with ``v^T`` (row ``k``: the ``k``-th eigenvector) in place of ``v``."""
    flat, batch = _flat(a)
    d = flat.shape[-1]
    w, vt = _guarded(_eigh_maker(d, flat.dtype), [flat], [(d,), (d, d)], flat.dtype)
    return w.reshape(*batch, d), vt.reshape(*batch, d, d)


def host_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host: ``(w, v)``, ascending eigenvalues and eigenvectors (columns) of the symmetric
    matrices whose lower triangles ``a`` holds (LAPACK's ``syevd``, divide and conquer); NaN
    for non-finite or failed matrices. Run it inside :func:`host_call`, which holds the lock."""
    w, vt = _host_eigh_rows(a)
    return w, np.swapaxes(vt, -1, -2)


def host_svd(a: np.ndarray, compute_uv: bool = True):
    """Host: thin SVD ``(u, s, vt)`` (``s`` descending; LAPACK's ``gesdd``), or ``s`` alone;
    NaN for non-finite or failed matrices."""
    flat, batch = _flat(a)
    m, n = flat.shape[-2:]
    k = min(m, n)
    make = _svd_maker(m, n, flat.dtype, compute_uv)
    if not compute_uv:
        (s,) = _guarded(make, [flat], [(k,)], flat.dtype)
        return s.reshape(*batch, k)
    u, s, vt = _guarded(make, [flat], [(m, k), (k,), (k, n)], flat.dtype)
    return u.reshape(*batch, m, k), s.reshape(*batch, k), vt.reshape(*batch, k, n)


def host_qr(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host: reduced QR ``(q, r)`` (LAPACK's ``geqrf`` and ``orgqr``); NaN where not finite."""
    flat, batch = _flat(a)
    m, n = flat.shape[-2:]
    k = min(m, n)
    q, r = _guarded(_qr_maker(m, n, flat.dtype), [flat], [(m, k), (k, n)], flat.dtype)
    return q.reshape(*batch, m, k), r.reshape(*batch, k, n)


def _host_solve_right(b: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Host: ``b r^{-1}`` (``r`` square); NaN where ``r`` is singular or not finite."""
    b, r = np.asarray(b), np.asarray(r)
    batch = np.broadcast_shapes(b.shape[:-2], r.shape[:-2])
    flat_b, _ = _flat(np.broadcast_to(b, (*batch, *b.shape[-2:])))
    flat_r, _ = _flat(np.broadcast_to(r, (*batch, *r.shape[-2:])))

    def solve(bb, rr):  # x r = b  <=>  r^T x^T = b^T
        return (np.linalg.solve(rr.T, bb.T).T,)

    (x,) = _guarded(lambda: solve, [flat_b, flat_r], [flat_b.shape[1:]], flat_b.dtype)
    return x.reshape(*batch, *b.shape[-2:])


# -- traced side ---------------------------------------------------------------------------------
def _real_float(a: jax.Array, name: str, square: bool) -> jax.Array:
    a = jnp.asarray(a)
    if jnp.issubdtype(a.dtype, jnp.complexfloating):
        raise ValueError(f"{name} supports real matrices only, got dtype {a.dtype}")
    if a.ndim < 2 or (square and a.shape[-1] != a.shape[-2]):
        kind = "square matrices [..., d, d]" if square else "matrices [..., m, n]"
        raise ValueError(f"{name} needs {kind}, got shape {a.shape}")
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _mT(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _mm(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)


def _diagonal(x: jax.Array) -> jax.Array:
    return jnp.diagonal(x, axis1=-2, axis2=-1)


def eigh(a: jax.Array, *, rows: bool = False) -> tuple[jax.Array, jax.Array]:
    """``(w, v)``: ascending eigenvalues ``[..., d]`` and eigenvectors (columns) ``[..., d, d]``
    of the symmetric matrices whose lower triangles ``a`` holds (the upper one is not read).

    ``rows=True`` returns ``v^T`` instead (row ``k``: the ``k``-th eigenvector), which on CPU
    is how LAPACK's column-major result already lies in memory: no transpose of the stack.
    """
    a = _real_float(a, "eigh", square=True)
    if not on_cpu():
        v, w = jax.lax.linalg.eigh(a, lower=True, symmetrize_input=False)
        return (w, _mT(v)) if rows else (w, v)
    w, vt = _eigh_cpu(a)
    return (w, vt) if rows else (w, _mT(vt))


@jax.custom_jvp
def _eigh_cpu(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(w, v^T)`` on the host."""
    out = (jax.ShapeDtypeStruct(a.shape[:-1], a.dtype), jax.ShapeDtypeStruct(a.shape, a.dtype))
    return host_call(_host_eigh_rows, out, a)


@_eigh_cpu.defjvp
def _eigh_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    w, vt = _eigh_cpu(a)
    v = _mT(vt)
    # The factors are a function of a's lower triangle: the symmetric tangent it stands for.
    da = jnp.tril(da) + _mT(jnp.tril(da, -1))
    vt_da_v = _mm(vt, _mm(da, v))
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    # f[i, j] = 1 / (w_j - w_i) off the diagonal, 0 on it (JAX's rule; inf for equal w).
    f = 1.0 / (eye + w[..., None, :] - w[..., :, None]) - eye
    return (w, vt), (_diagonal(vt_da_v), _mT(_mm(v, f * vt_da_v)))


def svd(a: jax.Array, compute_uv: bool = True):
    """Thin SVD of ``a`` ``[..., m, n]``: ``(u [..., m, k], s [..., k], vt [..., k, n])`` with
    ``k = min(m, n)`` and ``s`` descending, or ``s`` alone when ``compute_uv`` is False."""
    a = _real_float(a, "svd", square=False)
    if not on_cpu():
        return (
            tuple(jnp.linalg.svd(a, full_matrices=False))
            if compute_uv
            else (jnp.linalg.svd(a, compute_uv=False))
        )
    return _svd_cpu(a) if compute_uv else _singular_values_cpu(a)


def _svd_shapes(a: jax.Array):
    *batch, m, n = a.shape
    k = min(m, n)
    return (
        jax.ShapeDtypeStruct((*batch, m, k), a.dtype),
        jax.ShapeDtypeStruct((*batch, k), a.dtype),
        jax.ShapeDtypeStruct((*batch, k, n), a.dtype),
    )


@jax.custom_jvp
def _svd_cpu(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return host_call(host_svd, _svd_shapes(a), a)


@jax.custom_jvp
def _singular_values_cpu(a: jax.Array) -> jax.Array:
    return host_call(lambda x: host_svd(x, compute_uv=False), _svd_shapes(a)[1], a)


def _svd_tangents(a, da, u, s, vt):
    """JAX's SVD JVP rule for real thin factors: ``(du, ds, dvt)``."""
    m, n = a.shape[-2:]
    v = _mT(vt)
    ds_mat = _mm(_mT(u), _mm(da, v))
    s_row = s[..., None, :]
    eye = jnp.eye(s.shape[-1], dtype=a.dtype)
    # f[i, j] = 1 / (s_j^2 - s_i^2) off the diagonal, 0 on it.
    f = 1.0 / ((s_row + _mT(s_row)) * (s_row - _mT(s_row)) + eye) - eye
    dss, sds = s_row * ds_mat, _mT(s_row) * ds_mat
    # (JAX's extra term 0.5 (dS - dS^T) diag(1/s) is zero for real matrices.)
    du = _mm(u, f * (dss + _mT(dss)))
    dv = _mm(v, f * (sds + _mT(sds)))
    if m > n:
        dav = _mm(da, v)
        du = du + (dav - _mm(u, _mm(_mT(u), dav))) / s_row
    if n > m:
        dau = _mm(_mT(da), u)
        dv = dv + (dau - _mm(v, _mm(vt, dau))) / s_row
    return du, _diagonal(ds_mat), _mT(dv)


@_svd_cpu.defjvp
def _svd_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    u, s, vt = _svd_cpu(a)
    return (u, s, vt), _svd_tangents(a, da, u, s, vt)


@_singular_values_cpu.defjvp
def _singular_values_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    u, s, vt = _svd_cpu(a)
    return s, _diagonal(_mm(_mT(u), _mm(da, _mT(vt))))


def qr(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reduced QR of ``a`` ``[..., m, n]``: ``(q [..., m, k], r [..., k, n])``, ``k = min(m, n)``.
    Differentiable for ``m >= n`` (as ``jnp.linalg.qr``)."""
    a = _real_float(a, "qr", square=False)
    if not on_cpu():
        return tuple(jnp.linalg.qr(a, mode="reduced"))
    return _qr_cpu(a)


@jax.custom_jvp
def _qr_cpu(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    *batch, m, n = a.shape
    k = min(m, n)
    out = (
        jax.ShapeDtypeStruct((*batch, m, k), a.dtype),
        jax.ShapeDtypeStruct((*batch, k, n), a.dtype),
    )
    return host_call(host_qr, out, a)


@_qr_cpu.defjvp
def _qr_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    q, r = _qr_cpu(a)
    m, n = a.shape[-2:]
    if m < n:
        raise NotImplementedError("the QR derivative needs m >= n (as jnp.linalg.qr's)")
    # JAX's rule; the triangular solve da r^{-1} on the host too (it is LAPACK as well).
    da_rinv = host_call(_host_solve_right, jax.ShapeDtypeStruct(da.shape, da.dtype), da, r)
    qt_da_rinv = _mm(_mT(q), da_rinv)
    lower = jnp.tril(qt_da_rinv, -1)
    skew = lower - _mT(lower)
    dq = _mm(q, skew - qt_da_rinv) + da_rinv
    dr = _mm(qt_da_rinv - skew, r)
    return (q, r), (dq, dr)
