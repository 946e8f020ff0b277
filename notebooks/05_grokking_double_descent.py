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
# # Grokking and double descent
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optlab/optlab/blob/main/notebooks/05_grokking_double_descent.ipynb)
#
# Two training-dynamics surprises from D. Merkulov's seminar "Stories from training neural
# networks: SAM, Mode Connectivity, Grokking, Double Descent":
#
# * **Grokking** (Power, Burda, Edwards, Babuschkin, Misra, "Grokking: Generalization Beyond
#   Overfitting on Small Algorithmic Datasets", 2022): a small transformer trained on half of
#   the table of `x / y mod 97` memorizes its training half early, and only much later, under
#   weight decay, generalizes to the other half. The settings are the fast ones of Nanda et
#   al. ("Progress measures for grokking via mechanistic interpretability", ICLR 2023).
# * **Double descent** (Belkin, Hsu, Ma, Mandal, "Reconciling modern machine-learning practice
#   and the classical bias-variance trade-off", PNAS 2019): the test error of minimum-norm
#   least squares on polynomial features peaks where the features just interpolate the data,
#   and falls again beyond.
#
# `optlab lab grokking` and `optlab lab double-descent` run the same experiments as commands.

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

from optlab.lab import double_descent, grokking

# %% [markdown]
# ## Grokking on modular division
#
# Full-batch AdamW (betas 0.9, 0.98, weight decay 1), one transformer layer of width 128.
# With the full settings the test accuracy passes 0.95 several hundred steps after the
# training accuracy does; the small settings stop after the memorization phase, which is
# enough to see the gap open. Muon (hidden matrices; AdamW on the embeddings and head) can be
# compared by adding `"muon"` to `OPTIMIZERS`.

# %%
STEPS = 200 if SMALL else 1500
OPTIMIZERS = ("adamw",) if SMALL else ("adamw", "muon")
# The small settings use p = 47 (a quarter of the equations: each full-batch step is 4x cheaper).
split = grokking.modular_dataset(47 if SMALL else 97, "/", train_fraction=0.5, seed=0)
print(f"{len(split.y_train)} training and {len(split.y_test)} test equations")

fig, ax = plt.subplots(figsize=(6, 3.5))
for color, name in zip(("C0", "C1"), OPTIMIZERS):
    run = grokking.train(split, name, steps=STEPS, eval_every=25, seed=0)
    ax.plot(run.steps, run.train_acc, color=color, ls="--", label=f"{name} train")
    ax.plot(run.steps, run.test_acc, color=color, label=f"{name} test")
    memorized = grokking.time_to_grok(run.steps, run.train_acc)
    print(
        f"{name}: training accuracy >= 0.95 at step {memorized}, "
        f"test accuracy >= 0.95 at step {run.time_to_grok} (None: not within {STEPS} steps)"
    )
ax.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Double descent with Legendre features
#
# n = 30 equispaced samples of `atan(2t)` plus Gaussian noise (sd 0.2), features
# `P_0(t) .. P_k(t)` (Legendre), the minimum-norm least-squares fit (equal to NumPy's
# `lstsq`), test error averaged over noise draws. At degree 29 there are exactly as many
# features as samples: the interpolating fit is unique and wild. A small ridge removes the
# peak.

# %%
trials = 5 if SMALL else 20
degrees = np.arange(0, 120)
plain = double_descent.degree_sweep(n_train=30, degrees=degrees, noise=0.2, trials=trials, seed=0)
ridge = double_descent.degree_sweep(
    n_train=30, degrees=degrees, noise=0.2, trials=trials, seed=0, ridge=0.1
)
below, above = double_descent.peak_ratio(plain)
print(f"test error at the threshold: {below:.1e} x the best below it, {above:.1e} x the best above")
print(f"with ridge 0.1: {double_descent.peak_ratio(ridge)[1]:.2f} x the best above")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(plain.degrees, plain.test_mse, label="min-norm least squares")
ax.plot(ridge.degrees, ridge.test_mse, label="ridge 0.1")
ax.axvline(plain.threshold_degree, color="gray", ls=":", label="features = samples")
ax.set(xlabel="polynomial degree", ylabel="test MSE", yscale="log")
ax.legend(fontsize=8)
plt.show()
