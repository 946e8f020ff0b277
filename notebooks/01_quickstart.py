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
# # Quickstart: optlab transforms in optax chains and Flax NNX
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optlab/optlab/blob/main/notebooks/01_quickstart.ipynb)
#
# optlab's optimizers are ordinary optax `GradientTransformation`s: they chain, partition,
# take injected hyperparameters and accumulate gradients like any optax optimizer. This
# notebook shows each of those on a small problem, then trains a Flax NNX model with
# `nnx.Optimizer` and `optlab.muon`.

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
import optax
from flax import nnx

import optlab

# %% [markdown]
# ## A least-squares problem
#
# A linear map `W` (64 x 32) and a bias, fitted to noisy targets. Every optimizer below takes
# the same parameters and the same gradient.

# %%
key_x, key_w, key_n = jax.random.split(jax.random.key(0), 3)
x = jax.random.normal(key_x, (256, 64))
w_true = jax.random.normal(key_w, (64, 32)) / 8
y = x @ w_true + 0.01 * jax.random.normal(key_n, (256, 32))
params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}


def loss(p):
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


grad_fn = jax.grad(loss)
STEPS = 30 if SMALL else 200


def fit(tx, steps=STEPS, **extra):
    """Run `steps` jitted steps of `tx`; `extra` says which extra update arguments it needs."""

    @jax.jit
    def step(p, s):
        kwargs = {"grad_fn": grad_fn} if extra.get("sam") else {}
        updates, s = tx.update(grad_fn(p), s, p, **kwargs)
        return optax.apply_updates(p, updates), s

    p, s = params, tx.init(params)
    for _ in range(steps):
        p, s = step(p, s)
    return p, s


# %% [markdown]
# ## SAM before Shampoo
#
# SAM (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization")
# replaces the gradient by the gradient at the worst nearby point; whatever comes after it in
# the chain turns that gradient into a step. `optlab.sam(base, rho=...)` builds the chain and
# guards it with optlab's NaN policy; `update` needs `grad_fn`, the gradient as a function of
# the parameters. The same chain by hand is `sam_perturb` followed by Shampoo's
# preconditioner and a learning rate.

# %%
tx = optlab.sam(optlab.shampoo(3e-2, precondition_every=10), rho=0.05)
p, _ = fit(tx, sam=True)
print(f"sam(shampoo): loss {loss(p):.4f} (start {loss(params):.4f})")

by_hand = optlab.skip_nonfinite(
    optax.chain(
        optlab.sam_perturb(rho=0.05),
        optlab.scale_by_shampoo(precondition_every=10),
        optax.scale_by_learning_rate(3e-2),
    )
)
p, _ = fit(by_hand, sam=True)
print(f"sam_perturb -> scale_by_shampoo -> lr: loss {loss(p):.4f}")

# %% [markdown]
# ## Muon for matrices, AdamW for the rest
#
# Muon (Jordan et al., "Muon: An optimizer for hidden layers in neural networks") orthogonalizes
# the momentum of hidden weight matrices; embeddings, output layers and vectors go to AdamW.
# `optlab.muon` does the split itself from the parameter paths (`optlab.muon_labels`); the
# same split with `optax.partition` lets you choose any optimizer for either side.

# %%
labels = optlab.muon_labels(params)
print("labels:", labels)
p, _ = fit(optlab.muon(0.02, adam_learning_rate=3e-3))
print(f"optlab.muon: loss {loss(p):.4f}")

tx = optax.partition(
    {
        "muon": optax.chain(optlab.scale_by_muon(), optax.scale_by_learning_rate(0.02)),
        "adam": optax.adamw(3e-3, weight_decay=0.0),
    },
    labels,
)
p, _ = fit(optlab.skip_nonfinite(tx))
print(f"optax.partition(muon, adamw): loss {loss(p):.4f}")

# %% [markdown]
# ## Changing the learning rate during training: `optax.inject_hyperparams`
#
# Wrapped in `inject_hyperparams`, the learning rate (and Shampoo's other float options)
# becomes part of the state, where it can be read and changed between steps without
# recompiling.

# %%
tx = optax.inject_hyperparams(optlab.shampoo)(learning_rate=3e-2, precondition_every=10)
state = tx.init(params)
print("injected:", sorted(state.hyperparams))
step = jax.jit(lambda p, s: tx.update(grad_fn(p), s, p))
p = params
for i in range(STEPS):
    if i == STEPS // 2:  # halve the rate half way: a change of state, not of program
        state.hyperparams["learning_rate"] = state.hyperparams["learning_rate"] / 2
    updates, state = step(p, state)
    p = optax.apply_updates(p, updates)
print(f"lr now {float(state.hyperparams['learning_rate']):.4f}, loss {loss(p):.4f}")

# %% [markdown]
# ## Gradient accumulation: `optax.MultiSteps`
#
# `MultiSteps(tx, every_k_schedule=k)` averages k gradients and lets `tx` take one step with
# them; in between the update is zero and the inner state (Muon's momentum here) is untouched.

# %%
tx = optax.MultiSteps(optlab.muon(0.02, adam_learning_rate=3e-3), every_k_schedule=4)
p, state = fit(tx)
print(f"MultiSteps(muon, 4): {int(state.gradient_step)} inner steps in {STEPS} calls")
print(f"loss {loss(p):.4f}")

# %% [markdown]
# ## A Flax NNX model with `nnx.Optimizer`
#
# An `optlab.models.MLP` on scikit-learn's handwritten digits (bundled with scikit-learn, no
# download). `nnx.Optimizer` holds the model's optax state; the parameter paths Muon reads
# are the model's attribute names (`layers`, `head`), so the hidden layers go to Muon and
# `head` and the biases to AdamW.

# %%
from optlab import data, models

ds = data.load_digits()
x_train = ds.x_train.reshape(len(ds.x_train), -1)
x_test = ds.x_test.reshape(len(ds.x_test), -1)
model = models.MLP(x_train.shape[1], ds.num_classes, hidden=(128, 128), rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optlab.muon(0.02, adam_learning_rate=3e-3), wrt=nnx.Param)
labels = optlab.muon_labels(nnx.state(model, nnx.Param))
for path, label in jax.tree_util.tree_leaves_with_path(labels):
    print(f"{jax.tree_util.keystr(path):32s} {label}")


@nnx.jit
def train_step(model, optimizer, xb, yb):
    def batch_loss(m):
        logits = m(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    value, grads = nnx.value_and_grad(batch_loss)(model)
    optimizer.update(model, grads)
    return value


@nnx.jit
def accuracy(model, xb, yb):
    return jnp.mean(jnp.argmax(model(xb), -1) == yb)


epochs = 2 if SMALL else 10
for epoch in range(epochs):
    for xb, yb in data.batch_iterator(x_train, ds.y_train, batch_size=128, seed=epoch):
        value = train_step(model, optimizer, xb, yb)
    acc = accuracy(model, x_test, ds.y_test)
    print(f"epoch {epoch + 1}: last batch loss {float(value):.3f}, test accuracy {acc:.3f}")

# %% [markdown]
# Next: [kernels](02_kernels.ipynb) (what Muon and Shampoo compute), and
# [K-FAC and SOAP](06_kfac_soap.ipynb) (K-FAC needs one more argument to `update`).
