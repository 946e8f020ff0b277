# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Kernels: inverse roots, polar factors, and Shampoo as an adapted Muon
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optlab/optlab/blob/main/notebooks/02_kernels.ipynb)
#
# Shampoo needs inverse p-th roots of its statistics, Muon the orthogonal polar factor
# `U V^T` of its momentum. This notebook measures the accuracy and the cost of the methods
# `optlab.linalg` offers for both, then takes a Shampoo update apart into a left adaptation,
# Muon's update and a right adaptation (Eschenhagen, Cai, Lee, Shi, "Clarifying Shampoo") and
# checks the paper's time-averaged semi-orthogonality on the gradients of a real training run.
#
# Times here are wall-clock times of one jitted call on whatever machine runs the notebook:
# read them as a comparison between methods, not as benchmarks (those are in
# `benchmarks/RESULTS.md`, with the command and the machine).

# %%
# On Colab, install optlab (with the lab extra: plots, scikit-learn's digits) from the
# repository; anywhere else this cell does nothing (run from a checkout with
# `pip install -e ".[lab]"`).
import sys

if "google.colab" in sys.modules:
    import subprocess

    url = "git+https://github.com/optlab/optlab"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", f"optlab[lab] @ {url}"], check=True
    )

# %%
# Settings. JAX runs on the accelerator when there is one (Colab: Runtime > Change runtime
# type > GPU or TPU); OPTLAB_NOTEBOOK_PLATFORM=cpu forces the CPU. OPTLAB_NOTEBOOK_SMALL=1
# selects the small settings CI runs (about a minute on a 2-core CPU); the outputs stored
# with the notebook say which settings made them.
import os

import jax

if os.environ.get("OPTLAB_NOTEBOOK_PLATFORM"):
    jax.config.update("jax_platforms", os.environ["OPTLAB_NOTEBOOK_PLATFORM"])
SMALL = os.environ.get("OPTLAB_NOTEBOOK_SMALL", "0") == "1"
print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), small settings: {SMALL}")

# %%
import time

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import optlab
from optlab import analysis, data, linalg, models


def wall_ms(f, *args, repeat=5):
    """Best of `repeat` wall times of `f(*args)` in ms, compiled beforehand (the minimum is the
    least disturbed by other work on the machine)."""
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def load():
    """The machine's load next to the times: on a busy machine they say little."""
    if not hasattr(os, "getloadavg"):
        return "load average unknown"
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


# %% [markdown]
# ## Inverse p-th roots
#
# `linalg.inverse_root(a, p)` returns `(a + r I)^{-1/p}` with the relative ridge
# `r = eps * lambda_max + eps_floor`. The reference below is the same formula in float64 NumPy
# (eigendecomposition). `eigh` works in float32, `eigh64` in float64, `newton` is the coupled
# Newton iteration (matrix products only: the accelerators' method); `auto` picks per backend.

# %%
d = 128 if SMALL else 512
rng = np.random.default_rng(0)
q, _ = np.linalg.qr(rng.normal(size=(d, d)))


def reference_root(a, p, eps=1e-6, eps_floor=1e-16):
    w, v = np.linalg.eigh(a)
    r = eps * w.max() + eps_floor
    return (v * (w + r) ** (-1.0 / p)) @ v.T


# One compiled function per method, reused for every matrix (same shape).
roots = {
    method: jax.jit(lambda m, method=method: linalg.inverse_root(m, 4, method=method))
    for method in ("eigh", "eigh64", "newton", "auto")
}
rows = []
for condition in (1e2, 1e4, 1e6):
    a = (q * np.geomspace(1.0, 1.0 / condition, d)) @ q.T
    exact = reference_root(a, 4)
    a32 = jnp.asarray(a, jnp.float32)
    for method, f in roots.items():
        x = np.asarray(f(a32), np.float64)
        err = np.linalg.norm(x - exact) / np.linalg.norm(exact)
        rows.append((condition, method, err, wall_ms(f, a32)))
print(f"{d}x{d}, p = 4; {load()}")
print(f"{'condition':>9}  {'method':7}  {'rel. error':>10}  {'ms':>7}")
for condition, method, err, ms in rows:
    print(f"{condition:9.0e}  {method:7}  {err:10.2e}  {ms:7.2f}")

# %% [markdown]
# ## Polar factors `U V^T`
#
# `linalg.orthogonalize(x, method=...)`: Newton-Schulz with Muon's quintic coefficients (fast,
# but it only pushes the singular values into a band around 1), Polar Express (coefficients
# from optlab's own Remez solver: close to 1 in a few more products), the Gram variant
# (iterates on the small Gram matrix), and the SVD (exact, slowest on accelerators).
# `orthogonality_error(y)` is `max |sigma_i(y) - 1|`.

# %%
m, n = (256, 128) if SMALL else (1024, 512)
x = jax.random.normal(jax.random.key(1), (m, n))
results = {}
for method in linalg.ORTHOGONALIZE_METHODS:
    f = jax.jit(lambda z, method=method: linalg.orthogonalize(z, method=method))
    err = float(linalg.orthogonality_error(f(x)))
    results[method] = (err, wall_ms(f, x))
    print(f"{method:20s} error {err:9.2e}   {results[method][1]:7.2f} ms")

fig, ax = plt.subplots(figsize=(5, 3.5))
for method, (err, ms) in results.items():
    ax.scatter(ms, max(err, 1e-8))
    ax.annotate(method, (ms, max(err, 1e-8)), textcoords="offset points", xytext=(4, 4))
ax.set(xscale="log", yscale="log", xlabel="time (ms)", ylabel="max |sigma - 1|")
ax.set_title(f"polar factor of a {m}x{n} Gaussian matrix")
print(load())
plt.show()

# %% [markdown]
# ## Shampoo without accumulation is Muon
#
# For `M = U S V^T` and statistics `L`, `R`, Shampoo's update factors as
#
# $$L^{-1/4} M R^{-1/4} = \big[L^{-1/4} (M M^\top)^{1/4}\big]\, (U V^\top)\,
#   \big[(M^\top M)^{1/4} R^{-1/4}\big].$$
#
# With `L = M M^T` and `R = M^T M` (no accumulation) both outer factors are projectors and the
# update is Muon's `U V^T` (D. Merkulov, "Stories from training neural networks: SAM, Mode
# Connectivity, Grokking, Double Descent", seminar).

# %%
g = jax.random.normal(jax.random.key(2), (64, 96))
f = analysis.shampoo_muon_decomposition(g, g @ g.T, g.T @ g, eps=1e-9)
muon_update = linalg.orthogonalize(g, method="svd")
print(
    "||left @ UV^T @ right - update|| =",
    float(jnp.linalg.norm(f.left @ f.orthogonal @ f.right - f.update)),
)
print(
    "||update - U V^T|| / ||U V^T||    =",
    float(jnp.linalg.norm(f.update - muon_update) / jnp.linalg.norm(muon_update)),
)

# %% [markdown]
# ## Time-averaged semi-orthogonality on a real run
#
# Train the digits MLP with `optlab.shampoo`, record the gradient `G_t` of its second hidden
# layer at every step, and form the update Shampoo with AdaGrad-style sums
# `L_t = sum G G^T`, `R_t = sum G^T G` would apply to it, for `p = 4` (Shampoo) and
# `p = 2`. `analysis.semi_orthogonality` reports how far each update `O_t` is from a multiple
# of a semi-orthogonal matrix (`per_step`; 0 for Muon's `U V^T` of a full-rank gradient) and
# how far the running average of `O_s O_s^T` is (`running_average`), the paper's "time-averaged
# semi-orthogonal in expectation". Its docstring derives, for Kronecker-factored Gaussian
# gradients, that the average tends to `I` for `p = 2` but not for `p = 4`.

# %%
ds = data.load_digits()
x_train = ds.x_train.reshape(len(ds.x_train), -1)
model = models.MLP(x_train.shape[1], ds.num_classes, hidden=(64, 64), rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optlab.shampoo(3e-3, precondition_every=10), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, xb, yb):
    def batch_loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

    value, grads = nnx.value_and_grad(batch_loss)(model)
    optimizer.update(model, grads)
    return value, grads["layers"][1]["kernel"][...]


steps = 60 if SMALL else 400
gradients = []
batches = data.batch_iterator(x_train, ds.y_train, batch_size=64, epochs=None, drop_remainder=True)
for _, (xb, yb) in zip(range(steps), batches):
    value, g_hidden = train_step(model, optimizer, xb, yb)
    gradients.append(g_hidden)
print(f"{steps} steps, final batch loss {float(value):.3f}")

G = jnp.stack(gradients)  # [T, 64, 64]
ranks = np.linalg.matrix_rank(np.asarray(G, np.float64))
print(f"gradient ranks: {ranks.min()} to {ranks.max()} (of {min(G.shape[1:])})")
L = jnp.cumsum(G @ jnp.swapaxes(G, -1, -2), axis=0)
R = jnp.cumsum(jnp.swapaxes(G, -1, -2) @ G, axis=0)
fig, ax = plt.subplots(figsize=(6, 3.5))
t = np.arange(1, steps + 1)
for p in (4, 2):
    updates = analysis.shampoo_muon_decomposition(G, L, R, p=p).update
    so = analysis.semi_orthogonality(updates)
    ax.plot(t, so.per_step, alpha=0.5, label=f"p = {p}: per step")
    ax.plot(t, so.running_average, label=f"p = {p}: running average")
    print(
        f"p = {p}: per-step distance (last) {float(so.per_step[-1]):.3f}, "
        f"running average (last) {float(so.running_average[-1]):.3f}"
    )
muon = analysis.semi_orthogonality(jax.vmap(lambda z: linalg.orthogonalize(z, method="svd"))(G))
ax.plot(t, muon.per_step, "k--", label="Muon (U V^T): per step")
ax.set(xlabel="step", ylabel="distance from semi-orthogonal", yscale="log")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Reading the plot: averaging over time brings Shampoo's `p = 4` updates much closer to
# semi-orthogonal than any single update is, the direction of the paper's claim, but on this
# short run it does not reach 0. With AdaGrad-style sums the first updates are the largest and
# dominate the average (the `p = 2` average barely moves after the first steps). Muon's
# distance is not 0 either where this layer's gradients are rank-deficient (printed above: a
# ReLU unit inactive on the whole batch gives a zero row or column): `U V^T` keeps only the
# gradient's rank `r`, and a rank-`r` update has distance `sqrt((k - r) / r)`.
