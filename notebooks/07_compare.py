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
# # optlab compare from Python: tasks, profiles, your own optimizer
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optlab/optlab/blob/main/notebooks/07_compare.ipynb)
#
# `optlab compare` trains tasks with several optimizers from the same initialization and batch
# order and reports final accuracy, steps and seconds to a target accuracy, step and compile
# times, and, over several tasks, AlgoPerf-style performance profiles and scores (Dahl et al.,
# "Benchmarking Neural Network Training Algorithms", 2023; the scoring as in D. Merkulov's
# lecture "Modern optimization methods for training neural networks"). Everything the command
# does is `optlab.bench`, callable from Python.

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
from pathlib import Path

import optax
from IPython.display import Image, display

from optlab import bench

# %% [markdown]
# ## Tasks and optimizers
#
# A task is data, a model, a loss, a budget and a target accuracy. Tasks that train in
# milliseconds are profiled by steps to the target rather than seconds (their seconds would be
# timer noise). `mnist-lenet5`, `cifar10-resnet18` and `conll-lstm` read local files (`--data-dir`);
# the others are offline.

# %%
for name, task in bench.TASKS.items():
    print(f"{name:18s} by {task.profile_by:7s} {task.epochs:3d} epochs  {task.description}")
print("\noptimizers:", ", ".join(bench.OPTIMIZERS))
print("adam on digits-mlp:", bench.default_hparams("adam", "digits-mlp"))

# %% [markdown]
# ## Your own optimizer
#
# Any callable that takes hyperparameters as keyword arguments and returns an optax
# transformation can be compared, named `module:factory`; in a notebook the module is
# `__main__`. Its keyword defaults are its hyperparameters, and `hparams` overrides them as
# `--hp` does on the command line.


# %%
def nadamw(learning_rate=3e-3, weight_decay=1e-4):
    """optax's NAdamW: Adam with Nesterov momentum and decoupled weight decay."""
    return optax.nadamw(learning_rate, weight_decay=weight_decay)


print(bench.resolve_optimizer("__main__:nadamw"))

# %% [markdown]
# ## Two tasks, performance profiles
#
# Over several tasks, `compare` adds the performance profile of each optimizer: the fraction
# of tasks it solves within a factor `tau` of the fastest, and its score, the normalized area
# under that curve (1: fastest on every task).

# %%
out = Path(tempfile.mkdtemp())
config = bench.CompareConfig(
    tasks=("logistic", "digits-mlp"),
    optimizers=("sgd", "adam", "muon", "shampoo", "__main__:nadamw"),
    epochs=2 if SMALL else None,
    hparams={"adam": {"learning_rate": 3e-3}},
    out=out,
    quiet=True,
)
results = bench.compare(config, stream=sys.stdout)

# %%
print("scores:", {k: round(v, 3) for k, v in results["profiles"]["scores"].items()})
display(Image(filename=str(out / "performance_profiles.png")))
