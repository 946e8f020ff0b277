"""The optimizer registry: every entry builds and steps; overrides, defaults, module:factory."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optlab.bench import registry, runner, tasks
from optlab.bench.registry import OPTIMIZERS, build_optimizer, default_hparams, resolve_optimizer


class _BNNet(nnx.Module):
    """Tiny conv + BatchNorm + dense classifier: every kind of leaf the optimizers route."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.hidden = nnx.Linear(4 * 6 * 6, 8, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.bn(self.stem(x)))
        h = jnp.reshape(h, (h.shape[0], -1))
        return self.head(jax.nn.relu(self.hidden(h)))


_TASK = tasks.Task(
    name="tiny",
    description="tiny",
    load=lambda d: None,
    make_model=lambda ds, rngs: _BNNet(rngs=rngs),
    metrics=tasks.classification_metrics,
    epochs=1,
    batch_size=8,
    target=0.5,
)


def _batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, 8).astype(
        np.int32
    )


def _one_step(name, **overrides):
    model = _BNNet(rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    built = build_optimizer(name, "digits-lenet5", overrides)
    tx = built.tx
    step = jax.jit(runner.make_train_step(_TASK, graphdef, tx, built.needs_grad_fn))
    x, y = _batch()
    new_params, new_rest, _, loss = step(params, rest, tx.init(params), x, y)
    return params, rest, new_params, new_rest, float(loss)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_builds_and_steps(name):
    params, rest, new_params, new_rest, loss = _one_step(name)
    assert np.isfinite(loss)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, new_params)
    assert all(np.isfinite(v) for v in jax.tree.leaves(moved))
    assert max(jax.tree.leaves(moved)) > 0.0
    # BatchNorm's running statistics are updated by the step.
    assert any(
        not np.allclose(a, b) for a, b in zip(jax.tree.leaves(rest), jax.tree.leaves(new_rest))
    )


def test_sam_perturbed_pass_leaves_batch_stats_alone():
    # SAM's extra forward pass at w + e must not touch the running statistics: after one
    # step they equal plain SGD's (both come from the clean pass at the same w and batch).
    _, _, _, rest_sgd, _ = _one_step("sgd")
    _, _, _, rest_sam, _ = _one_step("sam", rho=0.5)
    for a, b in zip(jax.tree.leaves(rest_sgd), jax.tree.leaves(rest_sam)):
        np.testing.assert_array_equal(a, b)


def test_overrides_and_unknown_key():
    built = build_optimizer("sam", "digits-lenet5", {"rho": 0.05})
    assert built.name == "sam" and built.needs_grad_fn
    assert built.hparams["rho"] == 0.05 and built.hparams["learning_rate"] == 0.03
    with pytest.raises(KeyError, match="no hyperparameter 'rhoo'"):
        build_optimizer("sam", None, {"rhoo": 0.1})
    with pytest.raises(KeyError, match="unknown optimizer"):
        resolve_optimizer("adamx")


def test_task_defaults_follow_the_thesis():
    assert default_hparams("sam", "mnist-lenet5")["learning_rate"] == 0.03
    assert default_hparams("sam", "mnist-lenet5")["rho"] == 0.1
    assert default_hparams("sgd", "cifar10-resnet18")["weight_decay"] == 1e-3
    shampoo = default_hparams("shampoo", "mnist-lenet5")
    assert shampoo["learning_rate"] == 0.1 and shampoo["grafting"] == "none"
    # Every task default names a real hyperparameter of its optimizer.
    for task_name, per_opt in registry.TASK_DEFAULTS.items():
        assert task_name in tasks.TASKS
        for opt, hp in per_opt.items():
            for key in hp:
                assert OPTIMIZERS[opt].accepts(key), (task_name, opt, key)


def test_cosine_schedule():
    _, tx, hp, _ = build_optimizer("adam", None, {}, schedule="cosine", total_steps=10)
    assert hp["learning_rate"] == 1e-3  # recorded as the peak value
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    sizes = []
    for _ in range(11):
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        sizes.append(float(jnp.max(jnp.abs(updates["w"]))))
    # optax: step k uses lr_k = 1e-3 (1 + cos(pi k / 10)) / 2, so 0 from step 10 on.
    assert sizes[0] == pytest.approx(1e-3, rel=1e-3)
    assert all(a > b for a, b in zip(sizes[:10], sizes[1:10]))
    assert sizes[10] == 0.0
    with pytest.raises(ValueError):
        build_optimizer("adam", None, {}, schedule="cosine")
    with pytest.raises(ValueError, match="unknown schedule 'linear'; known: constant, cosine"):
        build_optimizer("adam", None, {}, schedule="linear", total_steps=10)


def test_module_factory(tmp_path, monkeypatch):
    (tmp_path / "my_opts.py").write_text(
        textwrap.dedent(
            """
            import optax

            def make(learning_rate=0.5, momentum=None):
                return optax.sgd(learning_rate, momentum=momentum)

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = resolve_optimizer("my_opts:make")
    assert spec.defaults() == {"learning_rate": 0.5, "momentum": None}
    _, tx, hp, _ = build_optimizer("my_opts:make", "digits-lenet5", {"learning_rate": 0.25})
    assert hp == {"learning_rate": 0.25, "momentum": None}
    updates, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
    np.testing.assert_allclose(updates["w"], -0.25)
    with pytest.raises(KeyError, match="cannot import"):
        resolve_optimizer("no_such_module_xyz:make")
    with pytest.raises(KeyError, match="has no"):
        resolve_optimizer("my_opts:missing")
    with pytest.raises(KeyError, match="not callable"):
        resolve_optimizer("my_opts:NOT_CALLABLE")
    with pytest.raises(KeyError, match="no hyperparameter"):
        build_optimizer("my_opts:make", None, {"lr": 0.1})


def test_trial_defaults_are_interior_trials():
    # On the tasks tuned by quasi-random trials, every swept learning rate is one of the 8
    # trials of its documented range (the registry's, or the range its command names) and
    # neither the smallest nor the largest of them: no default sits at the edge of what was
    # tried.
    from optlab.bench.sweep import grid

    ranges = {("logistic", "sam"): {"learning_rate": "1e-4:1"}}
    checked = 0
    for task in ("logistic", "entity-lstm"):
        for opt, hp in registry.TASK_DEFAULTS[task].items():
            if opt == "muon" and task == "logistic":
                key, overrides = "adam_learning_rate", {"adam_learning_rate": "1e-4:0.1"}
                overrides["learning_rate"] = 0.02
            else:
                key, overrides = "learning_rate", ranges.get((task, opt), {})
            _, points = grid(opt, overrides)
            tried = sorted(p[key] for p in points)
            assert len(tried) == registry.SWEEP_TRIALS
            assert hp[key] in tried[1:-1], (task, opt, hp[key], tried)
            assert "trials" in registry.hparam_source(opt, task)
            checked += 1
    assert checked >= 12


def test_every_edge_default_says_why():
    from optlab.bench.report import list_text
    from optlab.bench.sweep import EDGE_NOTE

    for task, per_opt in registry.TASK_DEFAULTS.items():
        for opt in per_opt:
            source = registry.hparam_source(opt, task)
            if EDGE_NOTE in source:
                assert "no value reaches the target" in source and "provisional" in source
    text = list_text()
    assert "8 quasi-random trials per optimizer" in text
    for task, command in registry.SWEEP_COMMANDS.items():
        assert command in text and command.startswith(f"optlab compare --sweep --task {task}")
