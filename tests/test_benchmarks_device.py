"""``benchmarks/device.py --smoke``: the accelerator benchmark runs end to end on CPU.

The smoke run uses tiny shapes, so only what does not depend on the machine is checked: every
kernel, precision and optimizer row is there, the files are written and named after the
device, and the numbers it reports are the ones its kernels are known to reach.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_benchmark_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "device.py"),
            "--smoke",
            "--out-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (json_path,) = tmp_path.glob("device_*_smoke.json")
    assert json_path.with_suffix(".md").exists()
    report = json.loads(json_path.read_text())
    assert report["device_kind"] and report["platform"] == "cpu" and report["smoke"]
    assert json_path.name == "device_cpu_smoke.json"

    kernels = report["kernels"]
    ortho = [r for r in kernels if r["kernel"] == "orthogonalize"]
    assert {r["precision"] for r in ortho} == {"float32", "tf32", "bfloat16"}
    for precision in ("float32", "tf32", "bfloat16"):
        methods = {r["method"] for r in ortho if r["precision"] == precision}
        assert {"optax.contrib newton_schulz", "optlab newton_schulz"} <= methods
        assert "optlab polar_express" in methods
    for r in ortho:
        # The ratio column is relative to optax's row of the same shape and precision.
        assert r["seconds"] > 0 and r["vs_optax"] > 0
        if r["method"] == "optlab polar_express" and r["precision"] != "bfloat16":
            # Polar Express converges: max |sigma - 1| about 1e-2 or better (optlab.muon's
            # docstring; measured 1e-4 in float32, benchmarks/RESULTS.md), while 5
            # Newton-Schulz steps stop in their [0.68, 1.13] band.
            assert r["error"] < 1e-2, r
    roots = [r for r in kernels if r["kernel"].startswith("inverse_root")]
    assert {(r["precision"], r["method"]) for r in roots} == {
        (p, m) for p in ("float32", "tf32") for m in ("optlab eigh", "optlab newton")
    }
    for r in roots:
        # Statistics G G^T / n of a 16 x 64 Gaussian G: condition number about
        # ((1 + 1/2) / (1 - 1/2))^2 = 9, so a float32 root's residual is of order
        # p * kappa * d * eps32 = 4 * 9 * 16 * 1.2e-7 ~ 7e-5; 1e-3 leaves a 10x margin and still
        # fails a wrong root (residual O(1)).
        assert r["error"] < 1e-3, r

    steps = {r["optimizer"]: r for r in report["steps"]}
    assert set(steps) == {
        "optax.adamw",
        "optlab.muon",
        "optlab.muon (bfloat16 iteration)",
        "optlab.shampoo",
        "optlab.soap",
        "optlab.kfac",
    }
    for r in steps.values():
        assert r["finite"], r
        assert 0 < r["plain_seconds"] <= r["refresh_seconds"]
    assert steps["optax.adamw"]["vs_adamw"] == 1.0
