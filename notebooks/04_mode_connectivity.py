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
# # Mode connectivity: low-loss curves between two solutions
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optlab/optlab/blob/main/notebooks/04_mode_connectivity.ipynb)
#
# Two networks trained from different initializations sit in minima separated by a loss
# barrier on the straight line between them, yet a simple curve with one trained bend joins
# them at almost no loss (Garipov, Izmailov, Podoprikhin, Vetrov, Wilson, "Loss Surfaces, Mode
# Connectivity, and Fast Ensembling of DNNs", NeurIPS 2018; the curve finding as in D.
# Merkulov's seminar "Stories from training neural networks: SAM, Mode Connectivity, Grokking,
# Double Descent"). `optlab.lab.connect` trains quadratic Bezier and polychain curves between
# two Flax NNX models and evaluates them; `optlab lab connect` is the same as a command.

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
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax
from flax import nnx

from optlab import data, models
from optlab.lab import connect

EPOCHS = 3 if SMALL else 20
CURVE_EPOCHS = 3 if SMALL else 20
POINTS = 11 if SMALL else 61
ds = data.load_digits()
x_train = ds.x_train.reshape(len(ds.x_train), -1)
x_test = ds.x_test.reshape(len(ds.x_test), -1)


def metrics(model, batch):
    """Per-example loss and correctness: what `connect` trains and evaluates on."""
    x, y = batch
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y), jnp.argmax(logits, -1) == y


def train_endpoint(seed):
    model = models.MLP(x_train.shape[1], ds.num_classes, hidden=(64, 64), rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        grads = nnx.grad(lambda m: metrics(m, (xb, yb))[0].mean())(model)
        optimizer.update(model, grads)

    for xb, yb in data.batch_iterator(x_train, ds.y_train, batch_size=64, epochs=EPOCHS, seed=seed):
        step(model, optimizer, xb, yb)
    return model


model_a, model_b = train_endpoint(0), train_endpoint(1)

# %% [markdown]
# ## Train the bends
#
# Each curve starts as the straight segment (its bend at the midpoint) and only the bend is
# trained, one `t ~ U(0, 1)` per batch, with a small L2 penalty on the curve point.

# %%
train_batches = [(x_train, ds.y_train)]
test_batches = [(x_test, ds.y_test)]
evals = {
    "line": connect.evaluate_curve(
        connect.line(model_a, model_b), metrics, train_batches, test_batches, num_points=POINTS
    )
}
for kind in ("bezier", "polychain"):
    curve = connect.init_curve(model_a, model_b, kind=kind)
    batches = data.batch_iterator(x_train, ds.y_train, batch_size=64, epochs=CURVE_EPOCHS)
    trained = connect.train_curve(curve, metrics, batches, optax.sgd(0.05, momentum=0.9))
    evals[kind] = connect.evaluate_curve(
        trained.curve, metrics, train_batches, test_batches, num_points=POINTS
    )

for kind, ev in evals.items():
    print(
        f"{kind:9s}: training-loss barrier {connect.barrier(ev.train_loss):.3f}, "
        f"max test error {1 - ev.test_acc.min():.3f}"
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for kind, ev in evals.items():
    axes[0].plot(ev.ts, ev.train_loss, label=kind)
    axes[1].plot(ev.ts, 1 - ev.test_acc, label=kind)
axes[0].set(xlabel="t", ylabel="training loss")
axes[1].set(xlabel="t", ylabel="test error")
axes[0].legend()
plt.tight_layout()
plt.show()
