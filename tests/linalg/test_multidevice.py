"""Batched LAPACK in jitted steps on several CPU devices: no hang, the one-device results.

Regression tests for Shampoo's first root step hanging when a jitted step ran on 2 or 8 forced
CPU devices (``--xla_force_host_platform_device_count``): jaxlib's batched CPU LAPACK kernels
and ``jax.pure_callback`` each blocked threads of a pool that all devices share
(:mod:`optlab.linalg._lapack` explains). Each device count runs tests/linalg/multidevice_child.py
in a subprocess (a process's device count is fixed when JAX starts) under a timeout, so that a
hang fails the test instead of stalling the suite. The child compares every multi-device result
with the same computation on one device, against bounds it derives from round-off analysis
(its docstrings); these tests assert them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.contract.checks import sharded_subprocess_env

CHILD = Path(__file__).resolve().with_name("multidevice_child.py")
DEVICE_COUNTS = (2, 8)
#: A child needs ~25 s on an idle 2-core machine and ~110 s on one loaded 3x over; a hang is
#: reported after this long (the child's own watchdog, a minute earlier, prints its stacks).
TIMEOUT_S = 600


def _env(n_devices: int) -> dict[str, str]:
    """The contract suite's subprocess environment, with ``n_devices`` CPU devices."""
    env = sharded_subprocess_env()
    kept = [f for f in env["XLA_FLAGS"].split() if "force_host_platform_device" not in f]
    env["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={n_devices}"])
    return env


@pytest.fixture(scope="module", params=DEVICE_COUNTS, ids=lambda n: f"{n}dev")
def child(request: pytest.FixtureRequest) -> dict[str, Any]:
    n = request.param
    try:
        proc = subprocess.run(
            [sys.executable, str(CHILD), str(TIMEOUT_S - 60)],
            env=_env(n),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        stderr = (
            err.stderr.decode(errors="replace")
            if isinstance(err.stderr, bytes)
            else str(err.stderr)
        )
        pytest.fail(f"{n} devices: no result after {TIMEOUT_S} s (hung?)\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"{n} devices: child failed (hung?)\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == n
    return result


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_shampoo_steps_match_one_device(child: dict[str, Any], layout: str) -> None:
    run = child["shampoo"][layout]
    assert run["updates_finite"]
    assert run["max_update"] > 0  # steps happened (3 of them, 2 with roots)
    assert run["update_diff_over_bound"] <= 1.0, run
    assert run["roots_relative_diff"] <= run["roots_bound"], run
    if layout == "sharded":
        # The statistics, the roots, the graft's second moments and the momentum: four flat
        # buffers in the engine's layout (the optimizer was built without mesh=).
        assert run["sharded_state_leaves"] >= 4, run
    else:
        assert run["sharded_state_leaves"] == 0, run


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
@pytest.mark.parametrize("kernel", ["eigh", "eigh64", "auto", "svd", "qr", "independent"])
def test_kernels_in_cond_match_one_device(child: dict[str, Any], layout: str, kernel: str) -> None:
    diff, bound = child["kernels"][layout][kernel]
    assert diff <= bound, (kernel, layout, diff, bound)
