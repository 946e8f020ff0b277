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
# # SAM and sharpness: flat and sharp minima, Hessian spectra, loss landscapes
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optlab/optlab/blob/main/notebooks/03_sam_sharpness.ipynb)
#
# Sharpness-Aware Minimization (Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware
# Minimization for Efficiently Improving Generalization", ICLR 2021) takes each step with the
# gradient at the worst point of a small ball around the weights, which steers training
# towards flat minima. This notebook trains the same MLP on scikit-learn's digits with SGD and
# with SAM around the same SGD, then measures how sharp each solution is three ways: the top of
# the Hessian spectrum (Lanczos), the Hessian trace (Hutchinson) and 1D loss landscapes along
# filter-normalized random directions (Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss
# Landscape of Neural Nets", NeurIPS 2018). `optlab lab landscape` is the same experiment as a
# command, with 2D and trajectory plots.

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
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import optlab
from optlab import data, models
from optlab.lab import hessian_eigenvalues_lanczos, hessian_trace, landscape

EPOCHS = 4 if SMALL else 20
GRID = 11 if SMALL else 41
ds = data.load_digits()
x_train = ds.x_train.reshape(len(ds.x_train), -1)
x_test = ds.x_test.reshape(len(ds.x_test), -1)


def model_loss(model, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def train(use_sam, seed=0):
    """The MLP trained by SGD with momentum, alone or inside SAM: same init, same batches."""
    model = models.MLP(x_train.shape[1], ds.num_classes, hidden=(64, 64), rngs=nnx.Rngs(seed))
    loss_fn, params = landscape.functional_loss(model, model_loss)
    sgd = optax.sgd(0.05, momentum=0.9)
    tx = optlab.sam(sgd, rho=0.5) if use_sam else sgd
    state = tx.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def grad_fn(p):
            return jax.grad(loss_fn)(p, (xb, yb))

        extra = {"grad_fn": grad_fn} if use_sam else {}
        updates, state = tx.update(grad_fn(params), state, params, **extra)
        return optax.apply_updates(params, updates), state

    for xb, yb in data.batch_iterator(x_train, ds.y_train, batch_size=64, epochs=EPOCHS, seed=seed):
        params, state = step(params, state, xb, yb)
    nnx.update(model, params)
    return model, loss_fn, params


runs = {name: train(name == "SAM") for name in ("SGD", "SAM")}
for name, (model, loss_fn, params) in runs.items():
    train_loss = float(loss_fn(params, (x_train, ds.y_train)))
    test_acc = float(np.mean(np.argmax(model(x_test), -1) == ds.y_test))
    print(f"{name}: training loss {train_loss:.4f}, test accuracy {test_acc:.3f}")

# %% [markdown]
# ## Hessian spectrum and trace
#
# `hessian_eigenvalues_lanczos(loss, params, k)` runs Lanczos on Hessian-vector products (no
# Hessian is formed); `hessian_trace` is Hutchinson's estimator with its standard error. Both
# take the loss as a function of the parameters alone, here on the whole training set.

# %%
for name, (_, loss_fn, params) in runs.items():

    def full_loss(p, loss_fn=loss_fn):
        return loss_fn(p, (x_train, ds.y_train))

    top = hessian_eigenvalues_lanczos(full_loss, params, k=3, num_iters=20, key=jax.random.key(0))
    trace = hessian_trace(full_loss, params, num_samples=10 if SMALL else 50, key=jax.random.key(1))
    print(
        f"{name}: top eigenvalues {np.round(np.asarray(top.eigenvalues), 3)}, "
        f"trace {float(trace.trace):.2f} +- {float(trace.stderr):.2f}"
    )

# %% [markdown]
# ## 1D loss landscapes
#
# The training loss along `w + a d` for three random directions `d`, each normalized filter by
# filter to the weights it perturbs (a dense layer's filter is one output neuron; biases get a
# zero direction), so that the two networks are compared on the same scale.
# `landscape.sublevel_width` is the width of the interval around `a = 0` where the loss stays
# within 0.1 of its value at the minimum: wider means flatter.

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for color, (name, (model, _, _)) in zip(("C0", "C1"), runs.items()):
    widths = []
    for i in range(3):
        land = landscape.landscape_1d(
            model, model_loss, (x_train, ds.y_train), key=jax.random.key(10 + i), num=GRID
        )
        widths.append(landscape.sublevel_width(land.coords[0], land.losses, rise=0.1))
        ax.plot(land.coords[0], land.losses, color=color, label=name if i == 0 else None)
    print(
        f"{name}: width of the 0.1-sublevel interval {np.mean(widths):.2f} (mean of 3 directions)"
    )
ax.set(xlabel="a (filter-normalized)", ylabel="training loss", yscale="log")
ax.legend()
plt.show()
