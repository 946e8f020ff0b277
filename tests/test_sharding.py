"""Sharded Kronecker-factor state (optlab.state_sharding, kronecker.shard_layout, Placement).

In this process (one device): the split layout's rule and its buffers against the one-device
layout, statistic by statistic; the option checks; ``state_sharding``'s walk through optax's
state structures. In a subprocess with 8 CPU devices (``tests/sharding_child.py``): Shampoo,
SOAP and K-FAC states sharded 8 ways, each device refreshing only its statistics, and the steps
equal to the one-device ones, with data-parallel and FSDP-sharded parameters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optlab
from optlab._src import kronecker as kron
from optlab._src.sharding import make_placement
from tests.contract.checks import sharded_subprocess_env

U = 2.0**-24  # float32's unit roundoff
CHILD = Path(__file__).with_name("sharding_child.py")
N_DEVICES = 8
TIMEOUT_S = 1200  # the child takes ~3.5 minutes on a loaded 2-core machine

#: Leaves of several block kinds: 4 x 4 blocks, 4 x 2 / 2 x 4 / 2 x 2 remainders, an order-3
#: leaf, vectors; with block_size 4 the groups hold 3 to 30-odd statistics, none a multiple of
#: every shard count tried.
SHAPES = ((10, 12), (6, 4), (3, 4, 5), (7,), (5,), (4, 4))


def _layouts(shards: int, root: int | None = None) -> tuple[kron.Layout, kron.Layout]:
    base = kron.make_layout(SHAPES, 4, 8192, True, root)
    return base, kron.shard_layout(base, shards)


def _stats(layout: kron.Layout, rng: np.random.Generator, steps: int = 2) -> jax.Array:
    """Statistics accumulated from ``steps`` random gradients (positive semidefinite)."""
    buffer = jnp.zeros(layout.stats_shape, jnp.float32)
    for _ in range(steps):
        leaves = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        grams = kron.axis_grams(kron.to_blocks(leaves, layout, jnp.float32), layout)
        buffer = kron.accumulate(buffer, grams, layout, 0.9)
    return buffer


def _real(buffer: jax.Array, layout: kron.Layout) -> list[np.ndarray]:
    return [
        np.asarray(s)[: g.count - g.padding]
        for s, g in zip(kron.group_stacks(buffer, layout), layout.groups, strict=True)
    ]


# -- the layout --------------------------------------------------------------------------------
@pytest.mark.parametrize("shards", [2, 3, 8])
def test_shard_layout_rule(shards: int) -> None:
    """Every group padded to the next multiple of ``shards`` (fewer than ``shards`` padded),
    each shard's row holding ``count / shards`` statistics of every group back to back, the
    blocks (kinds) unchanged."""
    base, split = _layouts(shards)
    assert split.shards == shards and split.kinds == base.kinds and split.leaves == base.leaves
    offset = 0
    for g, b in zip(split.groups, base.groups, strict=True):
        assert (g.dim, g.p, g.shards) == (b.dim, b.p, shards)
        assert g.count % shards == 0 and g.count - g.padding == b.count
        assert 0 <= g.padding < shards
        assert g.offset == offset
        offset += g.row_size
    assert split.matrix_row == offset and split.matrix_size == shards * offset
    assert split.vector_row * shards >= base.vector_size > (split.vector_row - 1) * shards
    assert split.stats_shape == (shards, split.matrix_row + split.vector_row)
    assert split.factors_shape == (shards, split.matrix_row)
    assert kron.shard_layout(base, 1) is base


def test_sharded_buffers_hold_the_same_statistics() -> None:
    """The same gradients accumulated in the split layout and in the one-device one give the
    same statistics (the same elementwise float32 arithmetic: exactly), the same diagonals and
    guard values, and zero padding."""
    base, split = _layouts(3)
    one = _stats(base, np.random.default_rng(0))
    three = _stats(split, np.random.default_rng(0))
    for a, b in zip(_real(one, base), _real(three, split), strict=True):
        np.testing.assert_array_equal(a, b)
    for s, g in zip(kron.group_stacks(three, split), split.groups, strict=True):
        assert not np.any(np.asarray(s)[g.count - g.padding :])
    np.testing.assert_array_equal(
        kron.diagonal_statistics(one, base), kron.diagonal_statistics(three, split)
    )
    # The diagonals in the order the guard reads them: every real diagonal entry once, and the
    # padding's zeros (which cannot change a maximum of nonnegative diagonals).
    diag_one = np.take(np.asarray(one), base.diagonal_indices)
    diag_three = np.take(np.asarray(three).ravel(), split.diagonal_indices)
    assert sorted(diag_three[diag_three != 0]) == sorted(diag_one[diag_one != 0])
    squares = jnp.asarray(3.0, jnp.float32)
    assert kron.statistics_bound(one, base, 0.9, squares) == kron.statistics_bound(
        three, split, 0.9, squares
    )
    assert bool(kron.statistics_finite(three, split))
    assert not bool(kron.statistics_finite(three.at[0, 0].set(jnp.inf), split))


def test_sharded_refresh_matches_and_does_not_count_padding() -> None:
    """Roots refreshed in the split layout (one device: Placement() runs the kernels on the
    whole stack) equal the one-device ones, and the padded statistics (zero, so with
    ``eps_floor=0`` their roots are infinite and rejected) are not counted as rejections.

    Tolerance: the same float32 arithmetic per matrix (host LAPACK factors each matrix alone),
    only batched differently; XLA may block a batched product of another batch size
    differently, changing the summation order of its length-d dots (``d U |X||Y|`` each, a few
    products chained in the residual check): 64 U relative to the largest root entry.
    """
    base, split = _layouts(4)
    one, four = _stats(base, np.random.default_rng(1)), _stats(split, np.random.default_rng(1))
    fn = kron.inverse_roots(eps=1e-3, eps_floor=0.0, method="eigh", threshold=4.0)
    roots1, rejected1 = kron.refresh(one, kron.identity_factors(base), base, fn)
    roots4, rejected4 = kron.refresh(four, kron.identity_factors(split), split, fn)
    assert int(rejected1) == int(rejected4) == 0
    for a, b in zip(_real(roots1, base), _real(roots4, split), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=64 * U * np.max(np.abs(a)))
    # Rejected padding kept its identity factor.
    for s, g in zip(kron.group_stacks(roots4, split), split.groups, strict=True):
        np.testing.assert_array_equal(
            np.asarray(s)[g.count - g.padding :],
            np.broadcast_to(np.eye(g.dim), (g.padding, g.dim, g.dim)),
        )


@pytest.mark.parametrize("method, tolerance", [("eigh", None), ("qr", None), ("qr", 0.5)])
def test_sharded_basis_refresh_matches(method: str, tolerance: float | None) -> None:
    """SOAP's basis refresh in the split layout: the same bases (tolerance as for the roots:
    the same per-matrix arithmetic), orders, and counts; padded statistics (zero: their
    off-diagonal ratio is 0, always "kept") are not counted as skipped."""
    base, split = _layouts(3, root=1)
    one, three = _stats(base, np.random.default_rng(2)), _stats(split, np.random.default_rng(2))
    new1 = kron.refresh_bases(
        one, kron.identity_factors(base), base, method=method, tolerance=tolerance
    )
    new3 = kron.refresh_bases(
        three, kron.identity_factors(split), split, method=method, tolerance=tolerance
    )
    assert (int(new1.rejected), int(new1.skipped)) == (int(new3.rejected), int(new3.skipped))
    for a, b in zip(_real(new1.bases, base), _real(new3.bases, split), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=64 * U)  # orthonormal columns: |Q| <= 1
    for o1, o3, g in zip(new1.orders, new3.orders, split.groups, strict=True):
        np.testing.assert_array_equal(np.asarray(o3)[: g.count - g.padding], o1)


def test_identity_factors_split() -> None:
    _, split = _layouts(8)
    factors = kron.identity_factors(split)
    assert factors.shape == split.factors_shape
    for s, g in zip(kron.group_stacks(factors, split), split.groups, strict=True):
        np.testing.assert_array_equal(s, np.broadcast_to(np.eye(g.dim), (g.count, g.dim, g.dim)))


# -- options and state_sharding on one device --------------------------------------------------
def _mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def test_placement_options_are_checked() -> None:
    with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh"):
        optlab.shampoo(0.1, mesh="data")
    with pytest.raises(ValueError, match=r"static_args=\('mesh',\)"):
        optax.inject_hyperparams(optlab.shampoo)(learning_rate=0.1, mesh=_mesh()).init(
            {"w": jnp.ones((4, 4))}
        )
    with pytest.raises(ValueError, match=r"mesh_axis must be one of .*'data'.*got 'model'"):
        optlab.soap(0.1, mesh=_mesh(), mesh_axis="model")
    explicit = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    with pytest.raises(ValueError, match="mesh_axis must be an Auto axis"):
        optlab.scale_by_shampoo(mesh=explicit)
    with pytest.raises(ValueError, match=r"axis must be one of .*got 'model'"):
        optlab.state_sharding(optax.adam(0.1), {"w": jnp.ones(3)}, _mesh(), axis="model")
    assert make_placement(None, "data").shards == 1


def test_state_sharding_walks_optax_structures() -> None:
    """The engine's buffers are found by their state types wherever optax nests them (guard,
    chain, inject_hyperparams, partition with masked leaves, MultiSteps); everything else
    gets the parameters' or the replicated sharding, in ``tx.init``'s structure."""
    mesh = _mesh()
    params = {"w": jnp.ones((8, 4)), "v": jnp.ones((4, 4)), "b": jnp.zeros(4)}
    # A Mesh is callable: inject_hyperparams would take it for a schedule unless static.
    shampoo = optax.inject_hyperparams(optlab.shampoo, static_args=("mesh",))(
        learning_rate=0.1, mesh=mesh
    )
    tx = optax.MultiSteps(
        optax.partition(
            {"kron": shampoo, "adam": optax.adam(0.1)}, {"w": "kron", "v": "kron", "b": "adam"}
        ),
        every_k_schedule=2,
    )
    shardings = optlab.state_sharding(tx, params, mesh)
    state = tx.init(params)
    assert jax.tree.structure(shardings) == jax.tree.structure(state)
    engine = [
        x
        for x in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, optlab.ShampooState))
        if isinstance(x, optlab.ShampooState)
    ]
    assert len(engine) == 1
    graft = engine[0].graft  # Adam grafting: its second moments in the engine's layout
    assert engine[0].stats.spec == engine[0].roots.spec == graft.nu.spec == P("data")
    assert engine[0].count.spec == graft.count.spec == P()
    flat = jax.tree.leaves(shardings)
    assert all(isinstance(s, NamedSharding) for s in flat)
    (momentum,) = [
        x
        for x in jax.tree.leaves(
            shardings, is_leaf=lambda x: isinstance(x, optlab.BlockMomentumState)
        )
        if isinstance(x, optlab.BlockMomentumState)
    ]
    assert momentum.mu.spec == P("data") and momentum.count.spec == P()
    assert sum(s.spec == P("data") for s in flat) == 4  # the four buffers, nothing else
    jax.jit(tx.init, out_shardings=shardings)(params)  # the tree fits tx.init's output


def test_state_sharding_muon_and_sam_replicated() -> None:
    """Transforms without an engine state: every leaf replicated (data parallel), or like its
    parameter."""
    mesh = _mesh()
    params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
    for tx in (optlab.muon(0.02), optlab.sam(optax.sgd(0.1), rho=0.05)):
        shardings = optlab.state_sharding(tx, params, mesh)
        assert all(s.spec == P() for s in jax.tree.leaves(shardings))


# -- 8 devices -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sharding") / "out.json"
    try:
        proc = subprocess.run(
            [sys.executable, str(CHILD), str(out)],
            env=sharded_subprocess_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"no result after {TIMEOUT_S} s (hung?)\n{str(err.stderr)[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["device_count"] == N_DEVICES
    return result


CASES = ["shampoo_dp", "shampoo_fsdp", "soap_dp", "soap_fsdp", "kfac_dp", "kfac_fsdp"]


def _case(child: dict[str, Any], name: str) -> dict[str, Any]:
    case = child["cases"][name]
    assert "error" not in case, case.get("error")
    return case


@pytest.mark.parametrize("name", CASES)
def test_8_devices_match_one_device(child: dict[str, Any], name: str) -> None:
    """Params, updates, counters, other state and the real statistics / factors equal the
    one-device run within the contract suite's tolerance (its ``leaf_mismatches``, rtol)."""
    assert _case(child, name)["mismatches"] == []


@pytest.mark.parametrize("name", CASES)
def test_8_devices_state_bytes(child: dict[str, Any], name: str) -> None:
    """Each engine buffer is split 8 ways: every device holds exactly 1/8 of it; the buffer
    exceeds the one-device one only by the padding (at most 7 statistics per group). With FSDP
    parameters the whole state is split: a device holds 1/8 of it plus the replicated scalars."""
    case = _case(child, name)
    padding = sum(g["padding"] * g["dim"] ** 2 * 4 for g in case["groups"])  # float32 bytes
    for buffer in case["buffers"].values():
        assert buffer["spec"] == str(P("data", None))
        assert sorted(buffer["device_bytes"]) == [str(i) for i in range(N_DEVICES)]
        assert set(buffer["device_bytes"].values()) == {buffer["bytes"] // N_DEVICES}
        assert buffer["bytes"] % N_DEVICES == 0
        # Padding, plus the vectors' part rounded up to a multiple of 8 entries (stats only).
        assert 0 <= buffer["bytes"] - buffer["single_device_bytes"] <= padding + 4 * N_DEVICES
    assert all(g["padding"] < N_DEVICES for g in case["groups"])
    state = case["state_bytes"]
    if name.endswith("fsdp"):
        assert state["replicated_max_size"] <= 1  # only scalars (counters) are replicated
        sharded = state["total"] - state["replicated"]
        assert set(state["per_device"].values()) == {sharded // N_DEVICES + state["replicated"]}


@pytest.mark.parametrize("name", CASES)
def test_8_devices_refresh_only_their_blocks(child: dict[str, Any], name: str) -> None:
    """At every refresh, each group's kernels run 8 times (once per device, in its shard_map)
    on ``count / 8`` statistics each: every device refreshes its own share and nothing else,
    8 shares covering the group once. The per-device compiled program calls the host kernels
    on exactly those shapes; the one-device run calls them once per group on all statistics."""
    case = _case(child, name)
    groups = case["groups"]
    calls = Counter((n, tuple(s)) for n, s in case["host_calls"])
    ref_calls = Counter((n, tuple(s)) for n, s in case["single_device_host_calls"])
    refreshes = case["refreshes"]
    # Shampoo: an eigh per refresh (its roots); K-FAC: a Cholesky inverse per refresh; SOAP:
    # an eigh on its first step, then a QR.
    routines = {"shampoo": ("eigh",), "kfac": ("inverse",), "soap": ("eigh", "qr")}[
        name.split("_")[0]
    ]
    expected, expected_ref = Counter(), Counter()
    for g in groups:
        local = (g["count"] // N_DEVICES, g["dim"], g["dim"])
        real = (g["count"] - g["padding"], g["dim"], g["dim"])
        if len(routines) == 1:
            expected[routines[0], local] += N_DEVICES * refreshes
            expected_ref[routines[0], real] += refreshes
        else:
            expected["eigh", local] += N_DEVICES
            expected["qr", local] += N_DEVICES * (refreshes - 1)
            expected_ref["eigh", real] += 1
            expected_ref["qr", real] += refreshes - 1
    assert calls == expected
    assert ref_calls == expected_ref
    hlo = Counter(case["hlo_callbacks"])
    for g in groups:
        assert hlo[f"f32[{g['count'] // N_DEVICES},{g['dim']},{g['dim']}]"] == len(routines)


def test_8_devices_value_errors(child: dict[str, Any]) -> None:
    errors = child["value_errors"]
    assert "build the optimizer with mesh=mesh, mesh_axis='data'" in errors["unsharded_tx"]
    assert "axis must be one of" in errors["bad_axis"]
    assert "mesh_axis must be one of" in errors["bad_mesh_axis"]
    assert "mesh_axis must be an Auto axis" in errors["explicit_axis"]
    assert "damping_mode='factored' only" in errors["kfac_exact"]
