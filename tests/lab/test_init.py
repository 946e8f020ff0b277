"""optlab.lab.init: the initialization scales, the forward signal's scale through depth, and
``optlab lab init``."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from optlab.cli import main
from optlab.lab import init as ini


@pytest.mark.parametrize("scheme", ini.SCHEMES)
def test_init_variances(scheme):
    params = ini.init_mlp(jax.random.key(0), [300, 200, 10], scheme)
    w = np.asarray(params[0]["w"])
    expected = {"he": 2 / 300, "glorot": 2 / 500, "naive": ini.NAIVE_STD**2}[scheme]
    # 60000 Gaussian entries: the sample variance's relative std is sqrt(2 / 60000) ~ 0.6%.
    assert w.var() == pytest.approx(expected, rel=0.03)
    assert np.all(np.asarray(params[0]["b"]) == 0) and params[1]["w"].shape == (200, 10)
    with pytest.raises(ValueError, match="scheme"):
        ini.init_mlp(jax.random.key(0), [3, 3], "lecun")


def test_signal_kept_by_he_and_halved_per_layer_by_glorot():
    # E[z_{l+1}^2] = n s^2 E[z_l^2] / 2: ratio 1 per layer for He, 1/2 for Glorot (equal
    # widths). Over 8 layers of width 512 on 1024 inputs, the product of per-layer sampling
    # errors stays within a factor 1.5 (each layer's ratio has ~5% relative noise).
    x = np.random.default_rng(0).standard_normal((1024, 512)).astype(np.float32)
    for scheme, per_layer in (("he", 1.0), ("glorot", 0.5)):
        params = ini.init_mlp(jax.random.key(1), [512] * 10, scheme)
        s = ini.forward_scales(params, x)
        ratio = s[-1] / s[0]
        assert per_layer**8 / 1.5 < ratio < per_layer**8 * 1.5, (scheme, ratio)


def test_he_trains_a_deep_net_that_glorot_and_naive_do_not():
    x, y = ini.digits()
    kw = dict(depth=16, width=64, steps=200, lr=0.003, batch_size=128, seed=0)
    final = {s: ini.train(x, y, scheme=s, **kw)[-20:].mean() for s in ini.SCHEMES}
    # Chance is log 10 = 2.30. The naive net's output is ~0.01^16 of its input: its gradient
    # vanishes and the loss cannot move from chance; He's reaches a small fraction of it.
    assert final["he"] < 0.5 < final["glorot"]
    assert final["naive"] == pytest.approx(np.log(10), abs=0.02)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--depths", "1"], "--depths"),
        (["--depths", "a,b"], "--depths"),
        (["--width", "0"], "--width"),
        (["--lr", "0"], "--lr"),
        (["--batch-size", "5000"], "--batch-size"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    try:
        code = main(["lab", "init", *argv, "--out", str(tmp_path), "--quiet"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and out == ""
    assert err.startswith("optlab lab init: error:") and err.count("\n") == 1


def test_tiny_init_run(capsys, tmp_path):
    argv = ["lab", "init", "--depths", "3", "--width", "8", "--steps", "5", "--batch-size", "16"]
    code = main([*argv, "--out", str(tmp_path), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    payload = json.loads((tmp_path / "init.json").read_text())
    assert set(payload["runs"]) == {"3 layers, he", "3 layers, glorot", "3 layers, naive"}
    assert len(payload["runs"]["3 layers, he"]["loss"]) == 5
    assert len(payload["runs"]["3 layers, he"]["forward_scales"]) == 3
    assert (tmp_path / "init.png").stat().st_size > 0
    assert out.strip().splitlines()[-1].startswith("final training loss")
