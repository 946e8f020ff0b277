"""Small shared timing helpers for optlab's benchmark scripts.

Everything here is generic: no optlab import. Typical use::

    from _timing import time_fn, matmul_rate, markdown_table

    f = jax.jit(lambda x: x @ x)
    seconds, compile_seconds = time_fn(f, x)

Timing rules (the same for every script that uses this module):

* ``time_fn`` compiles ahead of time when ``fn`` is a ``jax.jit`` function
  (``fn.lower(*args).compile()``), so the reported compile time is compile time only and the
  timed runs execute exactly that executable. For any other callable the compile time is the
  first call's time minus the steady-state median (trace + compile, approximately).
* Each timed run ends with ``jax.block_until_ready`` on the whole output pytree.
* The result is the median over ``repeats`` runs after ``warmup`` untimed runs; ``max_seconds``
  stops the repeats early (after at least ``min_repeats``) so that slow cases stay affordable,
  and ``min_seconds`` adds runs to fast cases. A median (not a mean, not a minimum) keeps the
  result stable against the occasional descheduled run on a shared machine.
* On a shared machine, ``time_fn_quiet`` measures the cores other processes kept busy
  (``OtherCpuLoad``, from ``/proc/stat``), waits for a quiet moment and measures again when they
  disturbed the measurement, and reports the disturbance with the timing.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


def _run(fn: Callable[..., Any], args: Sequence[Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 7,
    warmup: int = 1,
    min_repeats: int = 3,
    max_seconds: float | None = 20.0,
    min_seconds: float = 0.0,
    max_repeats: int = 100,
) -> tuple[float, float]:
    """``(median_seconds, compile_seconds)`` of ``fn(*args)``.

    Args:
      fn: a ``jax.jit``-wrapped function (compiled ahead of time here) or any callable.
      *args: positional arguments, passed unchanged on every call.
      repeats: timed runs (at most).
      warmup: untimed runs before the timed ones (after compilation).
      min_repeats: timed runs done even when ``max_seconds`` is exceeded.
      max_seconds: stop the timed runs once their total exceeds this (``None``: never).
      min_seconds: keep repeating past ``repeats`` (up to ``max_repeats``) until the timed
        runs add up to this, so that fast functions get enough samples for a stable median.
      max_repeats: cap on the timed runs that ``min_seconds`` can add.
    """
    if hasattr(fn, "lower"):
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        first = None
    else:
        compiled = fn
        first = _run(compiled, args)
        compile_s = math.nan
    for _ in range(warmup):
        _run(compiled, args)
    times: list[float] = []
    while True:
        times.append(_run(compiled, args))
        total = sum(times)
        if max_seconds is not None and len(times) >= min_repeats and total > max_seconds:
            break
        if len(times) >= max(repeats, 1) and (total >= min_seconds or len(times) >= max_repeats):
            break
    median = statistics.median(times)
    if first is not None:
        compile_s = max(first - median, 0.0)
    return median, compile_s


class QuietTiming(NamedTuple):
    """What :func:`time_fn_quiet` returns."""

    seconds: float  # median of the kept attempt
    compile_seconds: float  # from the first attempt (later ones may hit JAX's cache)
    other_cores: float  # cores other processes kept busy during the kept attempt
    waited_seconds: float  # time spent waiting for the machine to quieten


def wait_for_quiet(
    max_other_cores: float = 0.25, timeout: float = 60.0, sample: float = 2.0
) -> float:
    """Sleep until other processes use at most ``max_other_cores`` for one ``sample`` (seconds),
    or until ``timeout``; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        with OtherCpuLoad() as load:
            time.sleep(sample)
        if not load.cores > max_other_cores:
            break
    return time.perf_counter() - t0


def time_fn_quiet(
    fn: Callable[..., Any],
    *args: Any,
    max_other_cores: float = 0.25,
    attempts: int = 3,
    max_wait: float = 30.0,
    **kwargs: Any,
) -> QuietTiming:
    """:func:`time_fn`, repeated while other processes load the machine.

    Measures how many cores other processes kept busy during the measurement
    (:class:`OtherCpuLoad`). Above ``max_other_cores`` it waits (up to ``max_wait`` seconds,
    :func:`wait_for_quiet`) and measures again, up to ``attempts`` times in all, and keeps the
    least disturbed attempt. ``kwargs`` go to :func:`time_fn`.
    """
    best: tuple[float, float] | None = None
    first_compile = math.nan
    waited = 0.0
    for attempt in range(max(attempts, 1)):
        if attempt:
            waited += wait_for_quiet(max_other_cores, max_wait)
        with OtherCpuLoad() as load:
            median, compile_s = time_fn(fn, *args, **kwargs)
        if attempt == 0:
            first_compile = compile_s
        other = load.cores if math.isfinite(load.cores) else 0.0
        if best is None or other < best[1]:
            best = (median, other)
        if other <= max_other_cores:
            break
    assert best is not None
    return QuietTiming(best[0], first_compile, best[1], waited)


def matmul_rate(
    n: int = 2048,
    dtype: Any = jnp.float32,
    repeats: int = 7,
    warmup: int = 2,
    attempts: int = 3,
    max_wait: float = 10.0,
    details: bool = False,
) -> float | tuple[float, QuietTiming]:
    """This machine's measured ``n x n @ n x n`` matmul rate in GFLOP/s (``2 n^3`` FLOPs).

    Median of ``repeats`` jitted runs, retried (:func:`time_fn_quiet`, waiting up to
    ``max_wait`` seconds before each retry) while other processes load the machine. With
    ``details=True`` returns ``(gflops, QuietTiming)`` (how disturbed the kept measurement was).
    """
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
    timing = time_fn_quiet(
        mm,
        a,
        b,
        attempts=attempts,
        max_wait=max_wait,
        repeats=repeats,
        warmup=warmup,
        max_seconds=None,
    )
    gflops = 2.0 * n**3 / timing.seconds / 1e9
    return (gflops, timing) if details else gflops


def machine_info() -> dict[str, str]:
    """Cores, CPU model, Python/JAX versions and backend, for benchmark headers."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    devices = jax.devices()
    return {
        "cpu": cpu,
        "cores": str(cores),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _jaxlib_version(),
        "backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
    }


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return "?"


class OtherCpuLoad:
    """Average number of cores that *other* processes kept busy while the block ran (Linux).

    Benchmarks on a shared machine are only as good as the machine was quiet; report this
    next to the numbers. ``cores`` is ``nan`` where ``/proc/stat`` is unavailable::

        with OtherCpuLoad() as load:
            ...
        print(f"{load.cores:.2f} cores busy elsewhere")
    """

    def __init__(self) -> None:
        self.cores = math.nan
        self.seconds = math.nan

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        ticks = [int(v) for v in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> OtherCpuLoad:
        self._t0 = time.perf_counter()
        self._busy0 = self._busy_seconds()
        self._own0 = self._own_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        busy1 = self._busy_seconds()
        if self._busy0 is None or busy1 is None or self.seconds <= 0:
            return
        other = (busy1 - self._busy0) - (self._own_seconds() - self._own0)
        self.cores = max(other, 0.0) / self.seconds


def format_seconds(s: float) -> str:
    """``0.0123 -> '12.3 ms'`` (3 significant digits, s / ms / us)."""
    if not math.isfinite(s):
        return str(s)
    if s >= 1.0:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def format_value(v: Any) -> str:
    """Floats with 3 significant digits (scientific below 1e-2), everything else ``str``."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.3g}"
    return str(v)


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A GitHub markdown table; cells go through :func:`format_value`."""
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [line(list(headers)), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(row) for row in cells]
    return "\n".join(out)
