"""scale_by_soap / soap against a float64 numpy transcription of SOAP's reference algorithm (Vyas
et al., "SOAP: Improving and Stabilizing Shampoo using Adam", and its code), against optax's Adam
where nothing is rotated, and their equivariance, NaN/Inf and hyperparameter behaviour.

Tolerances. ``U32 = 2^-24``, ``U64 = 2^-53`` (unit roundoffs). The bases come from a backward
stable ``eigh`` (first step) and QR (refreshes): exact factors of ``L + E`` with ``||E|| <= c d
U ||L||``. An eigenvector then moves by ``<= ||E|| / gap`` (Davis-Kahan), and the Q factor of
the power step ``L Q`` by ``<= kappa(L) c d U`` (QR's perturbation bound). Each update is
``Q_1 .. D .. Q_k^T`` with ``|D| <= max|u|``, so it moves by ``<= 2 k K c d U max|u|`` with
``K = max(||L_1|| / gap(L_1), kappa(L_t))`` over the refreshes, ``k`` the rotated axes, ``c = 2``.
The gradients have singular values in [1, 2] (random singular vectors), so every statistic, a
weighted sum of ``G G^T`` terms, has ``kappa <= 4``, and ``L_1``'s gaps are known.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optlab
from optlab._src import kronecker as kron
from optlab._src.soap import SoapState, scale_by_soap, soap

U32, U64 = 2.0**-24, 2.0**-53


# -- the reference, transcribed ----------------------------------------------------------------
@pytest.fixture
def x64():
    """float64 for the whole test, set process-wide rather than with ``jax.enable_x64``: that
    context is thread-local, and XLA may run the host LAPACK callbacks of a step on another
    thread, where jax would then narrow their float64 results to float32 and fail the step."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def mode_apply(x, m, axis):
    """``x \\times_axis m``: ``m`` multiplies the ``axis`` index of ``x``."""
    return np.moveaxis(np.tensordot(m, x, axes=([1], [axis])), 0, axis)


def mode_gram(x, axis):
    m = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    return m @ m.T


def reference_soap(grads, *, b1, b2, eps, shampoo_beta, every, rotate=None, momentum="basis"):
    """Vyas et al.'s SOAP step for one tensor (their ``step``, ``update_preconditioner``,
    ``get_orthogonal_matrix`` and ``get_orthogonal_matrix_QR``), in float64 numpy.

    ``momentum="basis"``: the reference since its December 2024 "momentum change" (``exp_avg``
    kept in the eigenbasis, projected back before the factor update and forward after it);
    ``"raw"``: before it (an EMA of the raw gradients, projected at every step). Adam's form is
    optax's (eps added to the bias-corrected sqrt(v)), the convention optlab documents.
    ``rotate``: per axis, whether it has a statistic (``False``: an axis above max_precond_dim,
    or an ignored one). Returns the direction of every step (the first: zeros).
    """
    g0 = np.asarray(grads[0], np.float64)
    rotate = [True] * g0.ndim if rotate is None else rotate
    gg = [np.zeros((d, d)) if r else None for d, r in zip(g0.shape, rotate)]
    st = {"Q": None, "m": np.zeros_like(g0), "v": np.zeros_like(g0), "step": 0}

    def project(x):
        for a, q in enumerate(st["Q"]):
            if q is not None:
                x = mode_apply(x, q.T, a)
        return x

    def project_back(x):
        for a, q in enumerate(st["Q"]):
            if q is not None:
                x = mode_apply(x, q, a)
        return x

    def update_preconditioner(g):
        if momentum == "basis" and st["Q"] is not None:
            st["m"] = project_back(st["m"])
        for a, m in enumerate(gg):
            if m is not None:
                gg[a] = shampoo_beta * m + (1 - shampoo_beta) * mode_gram(g, a)  # torch lerp
        if st["Q"] is None:
            # eigh, columns flipped: eigenvalues descending.
            st["Q"] = [None if m is None else np.linalg.eigh(m)[1][:, ::-1] for m in gg]
        elif st["step"] % every == 0:
            new = []
            for a, (m, o) in enumerate(zip(gg, st["Q"])):
                if m is None:
                    new.append(None)
                    continue
                order = np.argsort(-np.diag(o.T @ m @ o), kind="stable")
                st["v"] = np.take(st["v"], order, axis=a)  # exp_avg_sq.index_select
                new.append(np.linalg.qr(m @ o[:, order])[0])
            st["Q"] = new
        if momentum == "basis" and st["step"] > 0:
            st["m"] = project(st["m"])

    outs = []
    for g in grads:
        g = np.asarray(g, np.float64)
        if st["Q"] is None:  # the first step only initializes
            update_preconditioner(g)
            outs.append(np.zeros_like(g))
            continue
        gp = project(g)
        st["step"] += 1
        t = st["step"]
        if momentum == "basis":
            st["m"] = b1 * st["m"] + (1 - b1) * gp
            m = st["m"]
        else:
            st["m"] = b1 * st["m"] + (1 - b1) * g
            m = project(st["m"])
        st["v"] = b2 * st["v"] + (1 - b2) * gp**2
        outs.append(project_back((m / (1 - b1**t)) / (np.sqrt(st["v"] / (1 - b2**t)) + eps)))
        update_preconditioner(g)
    return outs


# -- helpers -----------------------------------------------------------------------------------
HP = {"b1": 0.9, "b2": 0.95, "eps": 1e-8, "shampoo_beta": 0.9}
SINGULAR = (1.0, 2.0)  # every gradient's singular values, evenly spaced in this range


def orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def spectral_gradients(rng, n, steps=5, dtype=np.float32):
    """Square gradients ``A diag(s) B^T``, random orthogonal ``A``, ``B``, ``s`` in SINGULAR."""
    s = np.linspace(*SINGULAR, n)
    return [((orthogonal(rng, n) * s) @ orthogonal(rng, n).T).astype(dtype) for _ in range(steps)]


def bound_constant(n):
    """``K`` of the module docstring for spectral_gradients: ``kappa(L_t) <= (2 / 1)^2`` and
    ``||L_1|| / gap(L_1) = s_max^2 / min(s_{i+1}^2 - s_i^2)``."""
    s = np.linspace(*SINGULAR, n)
    return max((SINGULAR[1] / SINGULAR[0]) ** 2, s[-1] ** 2 / np.min(np.diff(s**2)))


def run(tx, grads, params=None):
    state = tx.init(grads[0] if params is None else params)
    update = jax.jit(tx.update)
    outs = []
    for g in grads:
        u, state = update(g, state, params)
        outs.append(jax.tree.map(np.asarray, u))
    return outs, state


def inner(state) -> SoapState:
    return state.inner


# -- the reference algorithm -------------------------------------------------------------------
@pytest.mark.parametrize("momentum", ["basis", "raw"])
@pytest.mark.parametrize("every", [1, 3])
def test_five_steps_equal_the_reference_in_float64(every, momentum, x64):
    # Both momentum conventions are the same map in exact arithmetic (the module docstring of
    # optlab._src.soap): optlab matches either. In float64 the bound is ~1e-12, far inside 1e-5.
    n = 6
    grads = spectral_gradients(np.random.default_rng(every), n, dtype=np.float64)
    ref = reference_soap(grads, every=every, momentum=momentum, **HP)
    outs, state = run(
        scale_by_soap(precondition_every=every, **HP), [jnp.asarray(g) for g in grads]
    )
    scale = max(np.max(np.abs(r)) for r in ref)
    tol = min(1e-5, 2 * 2 * bound_constant(n) * 2 * n * U64 * scale)
    for u, r in zip(outs, ref):
        assert u.dtype == np.float64
        np.testing.assert_allclose(u, r, rtol=0, atol=tol)
    assert int(inner(state).count) == 5 and int(inner(state).rejected_bases) == 0


@pytest.mark.parametrize("every", [1, 3])
def test_five_steps_equal_the_reference_in_float32(every):
    n = 6
    grads = spectral_gradients(np.random.default_rng(10 + every), n)
    ref = reference_soap(grads, every=every, **HP)
    outs, _ = run(scale_by_soap(precondition_every=every, **HP), [jnp.asarray(g) for g in grads])
    scale = max(np.max(np.abs(r)) for r in ref)
    tol = 2 * 2 * bound_constant(n) * 2 * n * U32 * scale
    np.testing.assert_array_equal(outs[0], 0)  # the first step only initializes
    for u, r in zip(outs, ref):
        np.testing.assert_allclose(u, r, rtol=0, atol=tol)


def test_tensor_and_blocks_equal_the_reference_per_axis_and_per_block(x64):
    # A 3-D tensor has one statistic per axis; a blocked matrix is SOAP on each block.
    rng = np.random.default_rng(3)
    tensor = [rng.standard_normal((3, 4, 5)) for _ in range(5)]
    tx = scale_by_soap(precondition_every=2, merge_small_dims=False, **HP)
    outs, _ = run(tx, [jnp.asarray(g) for g in tensor])
    for u, r in zip(outs, reference_soap(tensor, every=2, **HP)):
        np.testing.assert_allclose(u, r, rtol=0, atol=1e-9)
    matrix = [rng.standard_normal((8, 12)) for _ in range(5)]
    outs, _ = run(scale_by_soap(precondition_every=2, block_size=4, **HP), matrix)
    for i in range(0, 8, 4):
        for j in range(0, 12, 4):
            blocks = [g[i : i + 4, j : j + 4] for g in matrix]
            for u, r in zip(outs, reference_soap(blocks, every=2, **HP)):
                np.testing.assert_allclose(u[i : i + 4, j : j + 4], r, rtol=0, atol=1e-9)


def test_ignored_axis_is_not_rotated(x64):
    # {2: [1]}: only the rows of a matrix are rotated (a one-sided SOAP).
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal((4, 6)) for _ in range(5)]  # G G^T: 4 x 4, full rank
    tx = scale_by_soap(precondition_every=2, ignored_basis_change_dims={2: [1]}, **HP)
    outs, state = run(tx, grads)
    for u, r in zip(outs, reference_soap(grads, every=2, rotate=[True, False], **HP)):
        np.testing.assert_allclose(u, r, rtol=0, atol=1e-9)
    assert inner(state).bases.shape == (16,)  # one 4 x 4 basis, none for the columns


# -- no rotation: Adam -------------------------------------------------------------------------
TREE_SHAPES = {"w": (6, 5), "b": (5,), "t": (3, 4, 5), "s": ()}


@pytest.mark.parametrize(
    "options",
    [
        {"max_preconditioned_dim": 1},
        {"ignored_basis_change_dims": {2: [0, 1], 3: [0, 1, 2]}, "merge_small_dims": False},
        {"max_preconditioned_dim": 1, "precondition_1d": True},
    ],
    ids=["max_dim", "ignored", "max_dim_1d"],
)
def test_without_rotation_soap_is_adam_from_the_second_step(options):
    # The documented first-step convention: the first step only initializes (zero update, Adam's
    # moments untouched), then Adam's steps 1, 2, ... on the gradients 2, 3, ...
    # Both compute optax.scale_by_adam's formulas in float32; they may round differently in
    # b^t and the divisions: a few roundings of U32 each, relative (rtol 32 U32).
    rng = np.random.default_rng(5)
    grads = [
        {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in TREE_SHAPES.items()}
        for _ in range(5)
    ]
    outs, state = run(scale_by_soap(precondition_every=1, **HP, **options), grads)
    adam_outs, _ = run(optax.scale_by_adam(b1=HP["b1"], b2=HP["b2"], eps=HP["eps"]), grads[1:])
    assert inner(state).bases.size == 0
    for leaf in jax.tree.leaves(outs[0]):
        np.testing.assert_array_equal(leaf, 0)
    for u, a in zip(outs[1:], adam_outs):
        chex.assert_trees_all_close(u, a, rtol=32 * U32, atol=0)


def test_soap_optimizer_without_rotation_is_adamw_with_its_decay_every_step():
    rng = np.random.default_rng(6)
    params = {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)} for _ in range(4)]
    lr, wd = 0.1, 0.01
    outs, _ = run(soap(lr, weight_decay=wd, max_preconditioned_dim=1, **HP), grads, params)
    np.testing.assert_allclose(outs[0]["w"], -lr * wd * params["w"], rtol=U32 * 4)
    adamw = optax.adamw(lr, b1=HP["b1"], b2=HP["b2"], eps=HP["eps"], weight_decay=wd)
    ref, _ = run(adamw, grads[1:], params)
    for u, a in zip(outs[1:], ref):
        chex.assert_trees_all_close(u, a, rtol=32 * U32, atol=0)


# -- equivariance ------------------------------------------------------------------------------
@pytest.mark.parametrize("every", [1, 2])
def test_rotation_equivariance(every):
    # Training on U G_t V^T gives U u_t V^T: the statistics become U L U^T and V R V^T, their
    # eigenbases U Q_L and V Q_R (up to signs, which cancel), and Adam's coordinates are the same.
    n = 6
    rng = np.random.default_rng(7)
    grads = spectral_gradients(rng, n, steps=6)
    u_rot, v_rot = orthogonal(rng, n).astype(np.float32), orthogonal(rng, n).astype(np.float32)
    rotated = [u_rot @ g @ v_rot.T for g in grads]
    tx = scale_by_soap(precondition_every=every, **HP)
    outs, _ = run(tx, [jnp.asarray(g) for g in grads])
    outs_rot, _ = run(tx, [jnp.asarray(g) for g in rotated])
    scale = max(np.max(np.abs(u)) for u in outs)
    # Two runs, each within the reference bound, plus the rotations' own roundings (n U each).
    tol = 2 * (2 * 2 * bound_constant(n) * 2 * n + 4 * n) * U32 * scale
    for u, ur in zip(outs, outs_rot):
        np.testing.assert_allclose(ur, u_rot @ u @ v_rot.T, rtol=0, atol=tol)
    # Adam has no such property: the same check fails for it (the test can fail).
    adam = optax.scale_by_adam(b1=HP["b1"], b2=HP["b2"], eps=HP["eps"])
    a_outs, _ = run(adam, [jnp.asarray(g) for g in grads])
    a_rot, _ = run(adam, [jnp.asarray(g) for g in rotated])
    assert np.max(np.abs(a_rot[2] - u_rot @ a_outs[2] @ v_rot.T)) > 100 * tol


# -- vectors, refresh options, rejection -------------------------------------------------------
def test_precondition_1d_rotates_a_vector_into_its_statistic_s_eigenbasis():
    rng = np.random.default_rng(8)
    g1, g2 = (jnp.asarray(rng.standard_normal(6), jnp.float32) for _ in range(2))
    tx = scale_by_soap(precondition_1d=True, **HP)
    state = tx.init(g1)
    _, state = tx.update(g1, state)
    q = np.asarray(inner(state).bases, np.float64).reshape(6, 6)
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=8 * 6 * U32)
    # The statistic (1 - b_s) g1 g1^T has one nonzero eigenvalue: the first column is +-g1/|g1|.
    first = np.asarray(g1, np.float64) / np.linalg.norm(g1)
    assert abs(abs(q[:, 0] @ first) - 1) <= 8 * 6 * U32
    np.testing.assert_allclose(
        inner(state).stats[:36].reshape(6, 6),
        (1 - HP["shampoo_beta"]) * np.outer(g1, g1),
        rtol=4 * U32,
        atol=4 * U32,
    )
    # Adam's first step is the sign of the rotated gradient, rotated back.
    u2, _ = tx.update(g2, state)
    expected = q @ np.sign(q.T @ np.asarray(g2, np.float64))
    np.testing.assert_allclose(u2, expected, atol=1e-5)


def test_refresh_tolerance_one_keeps_the_first_bases_and_counts_every_skip():
    # ||B - diag B|| <= ||B|| always: tolerance 1 skips every QR refresh (the first eigh stays).
    n = 6
    grads = spectral_gradients(np.random.default_rng(9), n)
    outs, state = run(
        scale_by_soap(precondition_every=1, refresh_tolerance=1.0, **HP),
        [jnp.asarray(g) for g in grads],
    )
    ref = reference_soap(grads, every=10**9, **HP)  # never refreshed after the first step
    scale = max(np.max(np.abs(r)) for r in ref)
    for u, r in zip(outs, ref):
        np.testing.assert_allclose(
            u, r, rtol=0, atol=2 * 2 * bound_constant(n) * 2 * n * U32 * scale
        )
    assert int(inner(state).skipped_refreshes) == 2 * 4  # two statistics, refreshes at steps 2..5
    # Tolerance 0 skips only exactly diagonal B: none here, and the run is the plain one.
    outs0, state0 = run(
        scale_by_soap(precondition_every=1, refresh_tolerance=0.0, **HP),
        [jnp.asarray(g) for g in grads],
    )
    plain, _ = run(scale_by_soap(precondition_every=1, **HP), [jnp.asarray(g) for g in grads])
    assert int(inner(state0).skipped_refreshes) == 0
    for a, b in zip(outs0, plain):
        np.testing.assert_array_equal(a, b)


def test_a_non_finite_basis_is_rejected_counted_and_the_previous_one_kept(monkeypatch):
    real = kron.power_qr

    def broken(stats, basis):  # the first statistic of every group gets a NaN basis
        q, order = real(stats, basis)
        return q.at[0].set(jnp.nan), order

    monkeypatch.setattr(kron, "power_qr", broken)
    grads = spectral_gradients(np.random.default_rng(12), 4, steps=3)
    tx = scale_by_soap(precondition_every=1, **HP)
    state = tx.init(grads[0])
    bases = []
    for g in grads:
        u, state = tx.update(jnp.asarray(g), state)
        assert np.all(np.isfinite(u))
        bases.append(np.asarray(inner(state).bases))
    # One group (4 x 4) holding L (kept: rejected) and R (refreshed) at steps 2 and 3.
    assert int(inner(state).rejected_bases) == 2 and int(state.skipped_steps) == 0
    np.testing.assert_array_equal(bases[2][:16], bases[0][:16])
    assert not np.allclose(bases[2][16:], bases[0][16:])


# -- NaN / Inf ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, 1e20])
def test_a_bad_gradient_is_skipped_and_never_enters_the_state(bad):
    # NaN: not finite; 1e20: finite, but G G^T (1e40) and V (1e40) overflow float32.
    rng = np.random.default_rng(13)
    params = {"w": jnp.ones((4, 6)), "b": jnp.ones(6)}
    tx = soap(0.1, precondition_every=1)
    good = [
        jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
        for _ in range(3)
    ]
    update = jax.jit(tx.update)
    state = tx.init(params)
    for g in good[:2]:
        _, state = update(g, state, params)
    poisoned = {"w": good[2]["w"].at[0, 0].set(bad), "b": good[2]["b"]}
    u, new_state = update(poisoned, state, params)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    chex.assert_trees_all_equal(new_state.inner, state.inner)
    assert int(new_state.skipped_steps) == 1
    # The run continues as if that gradient never came.
    u_next, _ = update(good[2], new_state, params)
    u_ref, _ = update(good[2], state, params)
    chex.assert_trees_all_equal(u_next, u_ref)


def test_inject_hyperparams_and_extra_arguments():
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda x: 0.1 * x, params)
    plain = soap(0.01, b1=0.9, precondition_every=2)
    injected = optax.inject_hyperparams(soap)(learning_rate=0.01, b1=0.9, precondition_every=2)
    (u1, u2), _ = run(plain, [grads, grads], params)
    state = injected.init(params)
    for expected in (u1, u2):
        u, state = jax.jit(injected.update)(grads, state, params)
        # b1 as a float32 array instead of a Python constant: a few roundings of U32 in Adam's
        # arithmetic, relative to the largest entry of the update (the rotations mix entries).
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=0, atol=16 * U32 * np.max(np.abs(b)))
    u, _ = plain.update(grads, plain.init(params), params, unknown_extra=1)
    assert jax.tree.structure(u) == jax.tree.structure(params)


def test_half_precision_and_zero_size_leaves():
    params = {"w": jnp.ones((4, 3), jnp.bfloat16), "e": jnp.ones((0, 3)), "b": jnp.ones(3)}
    tx = soap(0.01, precondition_every=1)
    state = tx.init(params)
    assert inner(state)[0].stats.dtype == jnp.float32
    for _ in range(3):
        u, state = tx.update(jax.tree.map(lambda x: 0.5 * x, params), state, params)
    assert u["w"].dtype == jnp.bfloat16 and u["e"].shape == (0, 3)
    assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(u))
    assert int(state.skipped_steps) == 0


def test_non_floating_parameters_are_rejected_at_init():
    with pytest.raises(ValueError, match="int32"):
        scale_by_soap().init({"w": jnp.ones((2, 2), jnp.int32)})


# -- construction --------------------------------------------------------------------------------
_BAD_VALUES = {
    "b1": [1.0, -0.1, None, float("nan"), "0.9", True],
    "b2": [1.0, -0.1, None, float("nan")],
    "eps": [-1e-8, None, float("nan"), float("inf")],
    "shampoo_beta": [1.5, -0.1, float("nan"), "0.9"],
    "precondition_every": [0, -1, 2.5, None, True],
    "block_size": [0, 1.5, "8"],
    "max_preconditioned_dim": [0, None, 2.0],
    "merge_small_dims": [1, None, "yes"],
    "precondition_1d": [1, None],
    "ignored_basis_change_dims": [[1], {2: [2]}, {0: [0]}, {2: 1}, {2: [-1]}, {"2": [0]}],
    "refresh_tolerance": [-0.1, 1.5, float("nan"), "0.1"],
}


@pytest.mark.parametrize(
    "name, value", [(n, v) for n, values in _BAD_VALUES.items() for v in values]
)
def test_bad_arguments(name, value):
    with pytest.raises(ValueError, match=name):
        scale_by_soap(**{name: value})
    with pytest.raises(ValueError, match=name):
        soap(0.1, **{name: value})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": None}, "learning_rate"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        ({"learning_rate": 0.1, "weight_decay": None}, "weight_decay"),
    ],
)
def test_bad_optimizer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        soap(**kwargs)


def test_options_after_the_first_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        soap(0.1, 0.9, 0.95, 1e-8, 0.0, None)  # weight_decay_mask positionally
    with pytest.raises(TypeError):
        scale_by_soap(0.9)


def test_help_shows_the_math_and_cites_sources_by_name():
    for fn in (optlab.soap, optlab.scale_by_soap):
        doc = fn.__doc__
        assert "Q_L^T G_t Q_R" in doc and "Vyas" in doc and "Purifying Shampoo" in doc
        assert "{math}" not in doc and "seed" not in doc.lower()
