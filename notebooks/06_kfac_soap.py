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
# # K-FAC and SOAP on your model, and a comparison on LeNet-5
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optlab/optlab/blob/main/notebooks/06_kfac_soap.ipynb)
#
# * **K-FAC** (Martens, Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
#   Curvature", ICML 2015) preconditions each layer with the inverse of a Kronecker-factored
#   Fisher block `A ⊗ G` (`A`: second moments of the layer's inputs, `G`: of the gradients at
#   its outputs). It needs those factors from the forward and backward pass, so its `update`
#   takes one more argument: `optlab.kfac_value_and_grad` returns them with the loss and the
#   gradient, for any Flax NNX model of stock `nnx.Linear` / `nnx.Conv` / `nnx.Embed` layers.
# * **SOAP** (Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson, Kakade, "SOAP:
#   Improving and Stabilizing Shampoo using Adam", ICLR 2025) runs Adam in the eigenbasis of
#   Shampoo's statistics. It is a drop-in optax optimizer.
#
# The comparison at the end is the LeNet-5 task of M. P. Kuznetsova's thesis ("An
# experimental study of modern curvature-aware optimization methods for training neural
# networks", Lomonosov Moscow State University, 2023), on scikit-learn's digits resized to
# 32x32 instead of MNIST so that it runs offline, through `optlab.bench` (what
# `optlab compare` runs).

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
import sys
import tempfile

import jax.numpy as jnp
import optax
from flax import nnx

import optlab
from optlab import bench, data, models

ds = data.load_digits32()
EPOCHS = 1 if SMALL else 3


def evaluate(model):
    return float(jnp.mean(jnp.argmax(model(ds.x_test), -1) == ds.y_test))


# %% [markdown]
# ## K-FAC inside your own `nnx.jit`
#
# `fisher="true"` samples the targets of the second backward pass from the model's own
# predictive distribution (the Fisher of Martens and Grosse), hence the `key`.
# `optlab.kfac` keeps the factors' moving averages, inverts the damped factors every
# `precondition_every` steps (batched Cholesky), adds momentum and clips the step by its KL
# change.

# %%
model = models.LeNet5(ds.num_classes, rngs=nnx.Rngs(0))
print("layers K-FAC preconditions:", list(optlab.kfac_layers(model)))
optimizer = nnx.Optimizer(model, optlab.kfac(0.01, damping=1e-2), wrt=nnx.Param)
value_and_grad = optlab.kfac_value_and_grad("softmax_cross_entropy", fisher="true")


@nnx.jit
def kfac_step(model, optimizer, x, y, key):
    loss, grads, curvature = value_and_grad(model, x, y, key=key)
    optimizer.update(model, grads, curvature=curvature)
    return loss


key = jax.random.key(0)
for epoch in range(EPOCHS):
    for xb, yb in data.batch_iterator(ds.x_train, ds.y_train, batch_size=100, seed=epoch):
        key, sub = jax.random.split(key)
        loss = kfac_step(model, optimizer, xb, yb, sub)
    print(
        f"K-FAC epoch {epoch + 1}: batch loss {float(loss):.3f}, "
        f"test accuracy {evaluate(model):.3f}"
    )

# %% [markdown]
# ## SOAP: a drop-in optimizer
#
# No extra argument: the usual `nnx.value_and_grad` step. Shampoo's statistics are refreshed
# into an eigenbasis every `precondition_every` steps; Adam runs in that basis in between.

# %%
model = models.LeNet5(ds.num_classes, rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optlab.soap(3e-3, precondition_every=10), wrt=nnx.Param)


@nnx.jit
def step(model, optimizer, x, y):
    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


for epoch in range(EPOCHS):
    for xb, yb in data.batch_iterator(ds.x_train, ds.y_train, batch_size=100, seed=epoch):
        loss = step(model, optimizer, xb, yb)
    print(
        f"SOAP epoch {epoch + 1}: batch loss {float(loss):.3f}, test accuracy {evaluate(model):.3f}"
    )

# %% [markdown]
# ## Comparison on the thesis task
#
# `optlab.bench.compare` trains every optimizer from the same initialization and batch order
# with its default hyperparameters for the task and prints time and steps to the target test
# accuracy. The thesis found K-FAC and Shampoo too slow per step to pay off; the `step ms` and
# `s to target` columns show where that stands here. Times depend on the machine (and on what
# else runs on it).

# %%
# The small settings only check that the harness runs (K-FAC and SOAP were compiled above).
optimizers = ("sgd", "adam") if SMALL else ("sgd", "adam", "shampoo", "soap", "kfac")
config = bench.CompareConfig(
    tasks=("digits-lenet5",),
    optimizers=optimizers,
    epochs=1 if SMALL else None,  # None: the task's 12 epochs
    out=tempfile.mkdtemp(),
    quiet=True,
    plots=False,
)
results = bench.compare(config, stream=sys.stdout)
