"""scikit-learn's bundled handwritten digits: the offline default image task.

1797 grey-scale 8x8 images of the digits 0-9, shipped inside scikit-learn (no download).
They are the UCI "optdigits" set: 32x32 binary bitmaps summed over non-overlapping 4x4
blocks, so each pixel is an ink count in ``0..16`` (Alpaydin and Kaynak 1998).

:func:`load_digits32` makes them the shape of LeNet-5's input (Kuznetsova (2023), sec. 4.1) the way
LeCun et al. (1998) made MNIST's: the 8x8 field is resized to MNIST's 28x28 field by
bilinear interpolation (pixel-center aligned, edges clamped; a fixed linear map, so it is
deterministic), then zero-padded by 2 pixels on each side to 32x32, so that strokes near the
edge still reach the centers of C1's 5x5 receptive fields.
"""

from __future__ import annotations

import numpy as np

from optlab.data.base import Dataset, frozen, train_test_split

_INSTALL_HINT = (
    "the digits data set ships with scikit-learn, which optlab needs only for its lab "
    "extras: pip install 'optlab[lab]' (or pip install scikit-learn)"
)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    # Lazy import: scikit-learn is an optional extra ([lab]), not a core dependency.
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    bunch = sk_load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1D bilinear resizing with pixel-center alignment.

    Output pixel ``i`` samples the input at ``(i + 0.5) * n_in / n_out - 0.5`` (the
    ``align_corners=False`` convention of PyTorch, TensorFlow and ``jax.image.resize``),
    clamped to ``[0, n_in - 1]``. Rows are convex weights, so values stay in the input range.
    """
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1.0 - frac
    m[np.arange(n_out), hi] += frac
    return m


def resize_bilinear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(N, H, W)`` or ``(N, H, W, C)`` images to ``size`` (bilinear, separable)."""
    h, w = images.shape[1:3]
    rows, cols = bilinear_matrix(h, size[0]), bilinear_matrix(w, size[1])
    if images.ndim == 3:
        return np.einsum("ih,nhw,jw->nij", rows, images, cols)
    return np.einsum("ih,nhwc,jw->nijc", rows, images, cols)


def load_digits(
    test_fraction: float = 0.2,
    *,
    seed: int = 0,
) -> Dataset:
    """The 8x8 digits as NHWC images ``(N, 8, 8, 1)`` in ``[0, 1]`` (ink count / 16).

    Args:
        test_fraction: share of the 1797 images held out for testing (stratified by class).
        seed: seed of the train/test split.

    Returns:
        A :class:`Dataset` named ``"digits"`` with 10 classes (1438 train and 359 test images
        at the default fraction).

    Raises:
        ImportError: scikit-learn is not installed.
    """
    images, labels = _sklearn_digits()
    x = (images / 16.0).astype(np.float32)[..., None]
    y = labels.astype(np.int32)
    x_tr, y_tr, x_te, y_te = train_test_split(x, y, test_fraction, seed=seed)
    info = {"source": "sklearn.datasets.load_digits", "seed": seed}
    return Dataset(x_tr, y_tr, x_te, y_te, 10, "digits", frozen(info))


def load_digits32(
    test_fraction: float = 0.2,
    *,
    seed: int = 0,
) -> Dataset:
    """The digits as LeNet-5 inputs: ``(N, 32, 32, 1)`` images in ``[0, 1]``.

    Each 8x8 image is resized to 28x28 (bilinear, see :func:`bilinear_matrix`) and padded
    with 2 zero pixels per side, mirroring MNIST's 28x28 digits padded to LeNet-5's 32x32
    input (LeCun et al. 1998). The split is the same as :func:`load_digits` for the same
    ``seed`` and ``test_fraction``.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    ds = load_digits(test_fraction, seed=seed)

    def to32(x: np.ndarray) -> np.ndarray:
        x28 = resize_bilinear(x.astype(np.float64), (28, 28))
        return np.pad(x28, ((0, 0), (2, 2), (2, 2), (0, 0))).astype(np.float32)

    info = dict(ds.info, resize="bilinear 8x8 -> 28x28, zero pad 2 -> 32x32")
    return ds._replace(
        x_train=to32(ds.x_train), x_test=to32(ds.x_test), name="digits32", info=frozen(info)
    )
