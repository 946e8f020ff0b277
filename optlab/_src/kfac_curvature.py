r"""K-FAC's curvature: per-layer Kronecker factors from one forward and the needed backward passes.

:func:`kfac_value_and_grad` turns a Flax NNX model built from stock ``nnx.Linear``,
``nnx.Conv`` and ``nnx.Embed`` layers into ``(loss, grads, curvature)`` without rewriting the
model and without matching patterns in a jaxpr. How the layer inputs and the pre-activation
gradients are captured (the "perturbation trick"):

1. the model is split and merged into a private copy, in which every supported layer's class is
   swapped for a subclass whose ``__call__`` records the layer's input and adds a zero
   "perturbation" ``e`` to its output (one per call: a layer called several times, e.g. a
   recurrent cell unrolled over time, records each call); stock ``nnx.RNN`` loops (and
   ``nnx.Bidirectional`` of them), which run their cell under ``nnx.scan`` in another trace,
   are swapped for a subclass that runs the same steps in a Python loop, so an LSTM or GRU
   tagger needs no change (compile time then grows with the sequence length);
2. one ``jax.vjp`` of ``(params, e) -> logits`` (one forward pass); the cotangent of the data
   loss gives the parameter gradient and ``d loss / d e``, which is the gradient with respect
   to the layer's pre-activations ``s`` for every example and position (``ds/de = I``);
3. for the true Fisher, a second pullback of the same ``vjp`` with targets sampled from the
   model's predictive distribution (no second forward pass).

The factors (``num_cases`` ``M`` = the loss's cases: every position of the output but the last
axis; ``g`` = the gradient of the *summed* per-case losses, so one case's own ``d l / d s``):

* dense (Martens & Grosse 2015): ``A = mean_rows [a; 1] [a; 1]^T`` (the 1 only with a bias),
  ``G = (1/M) sum_rows g g^T``; with no extra axes the rows are the examples and ``M`` = their
  number, which is the paper's ``A = E[a a^T], G = E[g g^T]``;
* conv (KFC, Grosse & Martens 2016): the rows are the (example, location) pairs and ``a`` the
  im2col patch, ordered like the kernel's ``[*window, in]`` axes: ``A`` is KFC's patch second
  moment ``Omega`` averaged over locations and ``G`` KFC's ``Gamma`` summed over them (KFC's
  ``Omega (x) Gamma`` has the ``|T|`` on the other factor; the product is the same, and
  pi-damping is invariant to that split);
* embedding: ``A`` diagonal, the token frequencies ``mean_rows onehot(id)`` (the exact second
  moment of one-hot inputs is diagonal), ``G`` as for dense.

Layers applied over extra axes (sequence positions; the same layer called several times) follow
Eschenhagen et al. 2023. ``sharing="expand"`` (default): every (example, position, call) is a
row, as above (exact for a deep linear network whose loss has a term per position);
``sharing="reduce"``: per example, ``a`` is averaged and ``g`` summed over positions and calls
first, ``A = mean_n abar abar^T``, ``G = (1/M) sum_n gsum gsum^T`` (exact when the loss is one
term per example; cheaper factors). Embeddings always use "expand".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optlab._src.common import check_choice
from optlab.linalg._ops import matmul

LOSSES = ("softmax_cross_entropy", "sigmoid_cross_entropy", "squared_error")
FISHER_TYPES = ("true", "empirical")
SHARING = ("expand", "reduce")


class KFACFactors(NamedTuple):
    """One layer's factor contributions from one batch (an entry of ``curvature``).

    Attributes:
      a: the input factor, ``[d_in (+1 with a bias), same]``; for an embedding the diagonal
        ``[num_embeddings]``.
      g: the pre-activation gradient factor ``[d_out, d_out]``.
    """

    a: jax.Array
    g: jax.Array


# -- factors from captured inputs and gradients (the low-level path) ------------------------------
def _rows(x: jax.Array, keep_first: bool) -> jax.Array:
    """``[N, ..., d] -> [N * ..., d]`` (or ``[N, prod(...), d]`` with ``keep_first``)."""
    if keep_first:
        return x.reshape(x.shape[0], -1, x.shape[-1])
    return x.reshape(-1, x.shape[-1])


def _with_one(a: jax.Array) -> jax.Array:
    return jnp.concatenate([a, jnp.ones(a.shape[:-1] + (1,), a.dtype)], axis=-1)


def kfac_dense_factors(
    inputs: jax.Array | Sequence[jax.Array],
    preact_grads: jax.Array | Sequence[jax.Array],
    *,
    num_cases: int | jax.Array,
    bias: bool = True,
    sharing: str = "expand",
    row_weights: jax.Array | Sequence[jax.Array | None] | None = None,
) -> KFACFactors:
    r"""K-FAC factors of a dense layer ``s = a W (+ b)`` from its inputs and output gradients.

    The low-level path for models that are not NNX (tag the dense ops yourself): record each
    call's input ``a`` (``[N, ..., d_in]``) and the gradient of the summed per-case losses with
    respect to its output ``s`` (``[N, ..., d_out]``; e.g. by adding a zero perturbation to
    ``s`` and differentiating with respect to it). A layer called several times passes one
    array per call. Convolutions pass their im2col patches as ``inputs``.

    Args:
      inputs: the layer's input per call.
      preact_grads: ``d (sum of per-case losses) / d s`` per call, same leading shape.
      num_cases: ``M``, the number of loss cases the loss averages over.
      bias: append the homogeneous 1 to ``a`` (the layer has a bias).
      sharing: ``"expand"`` or ``"reduce"`` (module docstring).
      row_weights: optional 0/1 weights per call, shaped like the call's input without its last
        axis (None for a call whose rows all count): rows of weight 0 (padding) are left out of
        ``A`` (``A = sum_rows w abar abar^T / sum_rows w``; with ``"reduce"`` the per-example
        average is over the rows of weight 1).

    Returns:
      ``KFACFactors(a=A, g=G)`` in float32 at least.
    """
    check_choice("sharing", sharing, SHARING)
    ins = [inputs] if isinstance(inputs, jax.Array) else list(inputs)
    gs = [preact_grads] if isinstance(preact_grads, jax.Array) else list(preact_grads)
    dtype = jnp.promote_types(jnp.result_type(*ins, *gs), jnp.float32)
    ins = [x.astype(dtype) for x in ins]
    gs = [g.astype(dtype) for g in gs]
    if row_weights is None or isinstance(row_weights, jax.Array | np.ndarray):
        row_weights = [row_weights] * len(ins)
    ws = [
        jnp.ones(x.shape[:-1] + (1,), dtype) if w is None else jnp.asarray(w, dtype)[..., None]
        for x, w in zip(ins, row_weights)
    ]
    if bias:
        ins = [_with_one(x) for x in ins]
    if sharing == "expand":
        w = jnp.concatenate([_rows(x, False) for x in ws])
        a = jnp.concatenate([_rows(x, False) for x in ins])
        g = jnp.concatenate([_rows(x, False) for x in gs])
        big_a = matmul((a * w).T, a) / jnp.maximum(jnp.sum(w), 1.0)
    else:
        # Per example: inputs averaged (over rows of weight 1), gradients summed over positions
        # and calls.
        w = jnp.concatenate([_rows(x, True) for x in ws], axis=1)
        a = jnp.concatenate([_rows(x, True) for x in ins], axis=1)
        a = jnp.sum(a * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
        g = jnp.concatenate([_rows(x, True) for x in gs], axis=1).sum(axis=1)
        big_a = matmul(a.T, a) / a.shape[0]
    big_g = matmul(g.T, g) / num_cases
    return KFACFactors(big_a, big_g)


def kfac_embed_factors(
    ids: jax.Array | Sequence[jax.Array],
    preact_grads: jax.Array | Sequence[jax.Array],
    *,
    num_embeddings: int,
    num_cases: int | jax.Array,
    row_weights: jax.Array | Sequence[jax.Array | None] | None = None,
) -> KFACFactors:
    """K-FAC factors of an embedding lookup: ``a`` the token frequencies (the diagonal input
    factor; lookups of ``row_weights`` 0 left out, as in :func:`kfac_dense_factors`),
    ``G = (1/M) sum_rows g g^T`` (rule "expand" always)."""
    id_list = [ids] if isinstance(ids, jax.Array) else list(ids)
    gs = [preact_grads] if isinstance(preact_grads, jax.Array) else list(preact_grads)
    dtype = jnp.promote_types(jnp.result_type(*gs), jnp.float32)
    if row_weights is None or isinstance(row_weights, jax.Array | np.ndarray):
        row_weights = [row_weights] * len(id_list)
    flat = jnp.concatenate([jnp.ravel(i) for i in id_list])
    w = jnp.concatenate(
        [
            jnp.ones(jnp.shape(i), dtype).ravel() if r is None else jnp.asarray(r, dtype).ravel()
            for i, r in zip(id_list, row_weights)
        ]
    )
    freq = jnp.zeros((num_embeddings,), dtype).at[flat].add(w) / jnp.maximum(jnp.sum(w), 1.0)
    g = jnp.concatenate([_rows(x.astype(dtype), False) for x in gs])
    return KFACFactors(freq, matmul(g.T, g) / num_cases)


# -- losses ----------------------------------------------------------------------------------------
def _per_case_loss(loss: str, out: jax.Array, y: jax.Array) -> jax.Array:
    """Per-case losses (shape ``out.shape[:-1]``)."""
    if loss == "softmax_cross_entropy":
        logp = jax.nn.log_softmax(out, axis=-1)
        if jnp.issubdtype(y.dtype, jnp.integer):
            return -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
        return -jnp.sum(y * logp, axis=-1)
    if loss == "sigmoid_cross_entropy":
        # log(1 + e^z) - y z, written stably.
        return jnp.sum(jax.nn.softplus(out) - y * out, axis=-1)
    return jnp.sum(jnp.square(out - y), axis=-1)


def _sample_targets(loss: str, key: jax.Array, out: jax.Array) -> jax.Array:
    """Targets from the model's predictive distribution (the true Fisher)."""
    out = jax.lax.stop_gradient(out)
    if loss == "softmax_cross_entropy":
        return jax.random.categorical(key, out, axis=-1)
    if loss == "sigmoid_cross_entropy":
        return jax.random.bernoulli(key, jax.nn.sigmoid(out)).astype(out.dtype)
    # sum (z - y)^2 is the negative log-likelihood of N(z, I/2), up to a constant.
    return out + jnp.sqrt(0.5).astype(out.dtype) * jax.random.normal(key, out.shape, out.dtype)


def _check_targets(loss: str, out: jax.Array, y: jax.Array) -> None:
    if out.ndim < 2:
        raise ValueError(
            f"kfac_value_and_grad: the model's output must have a batch axis and an output "
            f"(class) axis, got shape {out.shape}"
        )
    int_labels = loss == "softmax_cross_entropy" and jnp.issubdtype(y.dtype, jnp.integer)
    want = out.shape[:-1] if int_labels else out.shape
    if tuple(y.shape) != tuple(want):
        raise ValueError(
            f"kfac_value_and_grad: y has shape {tuple(y.shape)}, expected {tuple(want)} for "
            f"loss={loss!r} and a model output of shape {tuple(out.shape)}"
        )


# -- layer capture ---------------------------------------------------------------------------------
class _Tape:
    """What the tapped layers record during one forward pass."""

    def __init__(self, names: dict[int, str], perturbations: dict[str, list[Any]] | None):
        self.names = names  # id(module) -> layer name
        self.perturbations = perturbations  # None: record output shapes only
        self.inputs: dict[str, list[jax.Array]] = {n: [] for n in names.values()}
        self.shapes: dict[str, list[jax.ShapeDtypeStruct]] = {n: [] for n in names.values()}
        self.trace = _current_trace()

    def record(self, module: Any, inputs: jax.Array, out: jax.Array) -> jax.Array:
        name = self.names.get(id(module))
        # A copy of a tapped layer (NNX transforms such as nnx.scan re-create the modules they
        # run) or a call in an inner trace: its values cannot be returned from this forward.
        if name is None or _current_trace() is not self.trace:
            # Recording a value of an inner trace would leak it (an UnexpectedTracerError later).
            layer = name if name is not None else type(module).__mro__[1].__name__
            raise ValueError(
                f"kfac_value_and_grad: layer {layer!r} is called inside a JAX or NNX "
                "transformation of the model's forward pass (jax.lax.scan, nnx.scan, "
                "vmap, remat), where its input and output cannot be captured; unroll that loop "
                "in Python (stock nnx.RNN layers are unrolled automatically)"
            )
        call = len(self.inputs[name])
        self.inputs[name].append(inputs)
        self.shapes[name].append(jax.ShapeDtypeStruct(out.shape, out.dtype))
        if self.perturbations is None:
            return out
        e = self.perturbations[name][call]
        return out + e.astype(out.dtype)


def _current_trace() -> Any:
    """JAX's current trace (None where this JAX version does not expose it: no check then)."""
    try:
        from jax._src import core
    except ImportError:  # pragma: no cover
        return None
    ctx = getattr(core, "trace_ctx", None)
    return getattr(ctx, "trace", None)


_TAPPED_CLASSES: dict[type, type] = {}
_ACTIVE: list[_Tape] = []


def _tapped_class(cls: type) -> type:
    """``cls`` with a ``__call__`` that reports to the active tape (cached per class)."""
    if cls not in _TAPPED_CLASSES:

        def __call__(self, inputs, *args, **kwargs):
            out = cls.__call__(self, inputs, *args, **kwargs)
            return _ACTIVE[-1].record(self, inputs, out)

        _TAPPED_CLASSES[cls] = type(f"_KFACTapped{cls.__name__}", (cls,), {"__call__": __call__})
    return _TAPPED_CLASSES[cls]


def _rnn_unrolled_call(
    self: Any,
    inputs: jax.Array,
    *,
    initial_carry: Any = None,
    seq_lengths: jax.Array | None = None,
    return_carry: bool | None = None,
    time_major: bool | None = None,
    reverse: bool | None = None,
    keep_order: bool | None = None,
    rngs: Any = None,
) -> Any:
    """``nnx.RNN.__call__`` with its ``nnx.scan`` replaced by a Python loop over time.

    The same computation step by step (same carry initialization, reversal, ``seq_lengths``
    handling and output order), but every call of the cell runs in the caller's trace, where the
    cell's layers can be captured. Used only inside :func:`kfac_value_and_grad`'s forward pass.
    """
    from flax import nnx
    from flax.nnx.nn.recurrent import flip_sequences

    return_carry = self.return_carry if return_carry is None else return_carry
    time_major = self.time_major if time_major is None else time_major
    reverse = self.reverse if reverse is None else reverse
    keep_order = self.keep_order if keep_order is None else keep_order
    time_axis = 0 if time_major else inputs.ndim - (self.cell.num_feature_axes + 1)
    num_batch = len(
        inputs.shape[1 : -self.cell.num_feature_axes] if time_major else inputs.shape[:time_axis]
    )

    def flip(x: jax.Array) -> jax.Array:
        return flip_sequences(x, seq_lengths, num_batch_dims=num_batch, time_major=time_major)

    if reverse:
        inputs = flip(inputs)
    rngs = self.rngs if rngs is None else rngs
    if isinstance(rngs, nnx.Rngs):
        rngs = rngs.carry.fork()
    carry = (
        self.cell.initialize_carry(inputs.shape[:time_axis] + inputs.shape[time_axis + 1 :], rngs)
        if initial_carry is None
        else initial_carry
    )
    carries, outputs = [], []
    for t in range(inputs.shape[time_axis]):
        carry, y = self.cell(carry, jax.lax.index_in_dim(inputs, t, time_axis, keepdims=False))
        carries.append(carry)
        outputs.append(y)
    outputs = jax.tree.map(lambda *ys: jnp.stack(ys, axis=time_axis), *outputs)
    if seq_lengths is not None and return_carry:
        # The carry after each sequence's last valid step (nnx.RNN's rule, one batch axis).
        stacked = jax.tree.map(lambda *cs: jnp.stack(cs), *carries)
        last = jnp.asarray(seq_lengths) - 1
        carry = jax.tree.map(lambda c: c[last, jnp.arange(c.shape[1])], stacked)
    if reverse and keep_order:
        outputs = jax.tree.map(flip, outputs)
    return (carry, outputs) if return_carry else outputs


def _unrolled_rnn_class(cls: type) -> type:
    if cls not in _TAPPED_CLASSES:
        _TAPPED_CLASSES[cls] = type(
            f"_KFACUnrolled{cls.__name__}", (cls,), {"__call__": _rnn_unrolled_call}
        )
    return _TAPPED_CLASSES[cls]


def _is_stock_rnn(module: Any) -> bool:
    from flax import nnx

    return isinstance(module, nnx.RNN) and type(module).__call__ is nnx.RNN.__call__


def _layer_kind(module: Any) -> str | None:
    from flax import nnx

    # Exactly the stock layers, or subclasses that keep the stock forward pass.
    for kind, cls in (("dense", nnx.Linear), ("conv", nnx.Conv), ("embed", nnx.Embed)):
        if isinstance(module, cls) and type(module).__call__ is cls.__call__:
            return kind
    return None


def layer_name(path: Sequence[Any]) -> str:
    """A module path ``('layers', 0)`` as the layer name ``"layers/0"`` (keys of
    ``curvature``, and of :func:`optlab.kfac_layers`)."""
    return "/".join(str(p) for p in path)


def find_layers(model: Any) -> dict[str, tuple[str, Any]]:
    """``{name: (kind, module)}`` for the model's supported layers, in graph order."""
    from flax import nnx

    out: dict[str, tuple[str, Any]] = {}
    for path, module in nnx.iter_modules(model):
        kind = _layer_kind(module)
        if kind is not None:
            out[layer_name(path)] = (kind, module)
    return out


def _conv_patches(module: Any, inputs: jax.Array) -> jax.Array:
    """im2col patches of an ``nnx.Conv``'s input: ``[N', *out_spatial, prod(window) * in]``,
    the patch axis ordered like the kernel's ``[*window, in]`` (row-major), so that the
    convolution is ``patches @ kernel.reshape(-1, out)``."""
    from flax.nnx.nn.linear import canonicalize_padding

    kernel_size = tuple(module.kernel_size)
    nd = len(kernel_size)
    if module.feature_group_count != 1 or module.mask is not None:
        raise ValueError(
            "kfac_value_and_grad supports nnx.Conv with feature_group_count=1 and no mask; "
            f"got feature_group_count={module.feature_group_count}, mask "
            f"{'set' if module.mask is not None else 'None'}"
        )

    def broadcast(x):
        x = 1 if x is None else x
        return (x,) * nd if isinstance(x, int) else tuple(x)

    num_batch = inputs.ndim - (nd + 1)
    if num_batch != 1:
        inputs = inputs.reshape((-1,) + inputs.shape[num_batch:])
    strides = broadcast(module.strides)
    input_dilation = broadcast(module.input_dilation)
    kernel_dilation = broadcast(module.kernel_dilation)
    padding = canonicalize_padding(module.padding, nd)
    # The same padding nnx.Conv applies itself before convolving.
    if padding in ("CIRCULAR", "REFLECT"):
        dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
        pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
        inputs = jnp.pad(inputs, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])
        padding = "VALID"
    elif padding == "CAUSAL":
        inputs = jnp.pad(inputs, [(0, 0), (kernel_dilation[0] * (kernel_size[0] - 1), 0), (0, 0)])
        padding = "VALID"
    spatial_shape = inputs.shape[1:-1]
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
    if isinstance(padding, str):
        pads = jax.lax.padtype_to_pads(spatial_shape, dilated, strides, padding)
    else:
        pads = [tuple(p) for p in padding]
    if all(d == 1 for d in input_dilation) and all(lo >= 0 and hi >= 0 for lo, hi in pads):
        # im2col as one gather with static indices (position o, window offset k of axis a:
        # o * stride + k * dilation): a copy of the patches, fast to compile, where
        # conv_general_dilated_patches convolves with a one-hot kernel (prod(window) * in
        # multiply-adds per patch entry: 10x LeNet's forward convolution).
        x = jnp.pad(inputs, [(0, 0), *pads, (0, 0)])
        index = []
        for a, (n, (lo, hi), w, st, d, k) in enumerate(
            zip(spatial_shape, pads, dilated, strides, kernel_dilation, kernel_size)
        ):
            out_size = (n + lo + hi - w) // st + 1
            idx = np.arange(out_size)[:, None] * st + np.arange(k)[None, :] * d
            shape = [1] * (2 * nd)
            shape[a], shape[nd + a] = out_size, k
            index.append(idx.reshape(shape))
        patches = x[(slice(None), *index, slice(None))]  # [N, *out, *window, in]
        return patches.reshape(patches.shape[: 1 + nd] + (-1,))
    spatial = "HWDXYZ"[:nd] if nd <= 6 else None
    spec = "N" + spatial + "C"
    patches = jax.lax.conv_general_dilated_patches(
        inputs,
        kernel_size,
        strides,
        padding if isinstance(padding, str) else pads,
        lhs_dilation=input_dilation,
        rhs_dilation=kernel_dilation,
        dimension_numbers=(spec, "O" + spatial + "I", spec),
        # Patches are an identity convolution: no TF32 rounding on GPUs.
        precision=jax.lax.Precision.HIGHEST,
    )
    # jax orders the patch axis (in, *window); the kernel flattens as (*window, in).
    c = inputs.shape[-1]
    p = patches.reshape(patches.shape[:-1] + (c, *kernel_size))
    p = jnp.moveaxis(p, patches.ndim - 1, -1)
    return p.reshape(patches.shape)


def _layer_factors(
    kind: str,
    module: Any,
    inputs: list[jax.Array],
    grads: list[jax.Array],
    num_cases: int | jax.Array,
    sharing: str,
    case_mask: jax.Array | None,
) -> KFACFactors:
    # Rows that are loss cases themselves (a call whose output has the loss's case shape) are
    # weighted by the mask of ignored labels; other rows (a recurrent cell's per-step calls,
    # convolution locations) all count.
    weights = [
        case_mask if case_mask is not None and g.shape[:-1] == case_mask.shape else None
        for g in grads
    ]
    if kind == "embed":
        return kfac_embed_factors(
            inputs,
            grads,
            num_embeddings=module.num_embeddings,
            num_cases=num_cases,
            row_weights=weights,
        )
    bias = module.bias is not None
    if kind == "conv":
        inputs = [_conv_patches(module, x) for x in inputs]
        # Gradients flattened like the patches (extra batch dims folded into the first).
        grads = [g.reshape(p.shape[:-1] + g.shape[-1:]) for g, p in zip(grads, inputs)]
        weights = [None] * len(inputs)
    return kfac_dense_factors(
        inputs, grads, num_cases=num_cases, bias=bias, sharing=sharing, row_weights=weights
    )


# -- the public function ---------------------------------------------------------------------------
def kfac_value_and_grad(
    loss: str = "softmax_cross_entropy",
    fisher: str = "true",
    *,
    sharing: str = "expand",
) -> Callable[..., tuple[jax.Array, Any, dict[str, KFACFactors]]]:
    r"""``(model, x, y, *, key) -> (loss, grads, curvature)`` for K-FAC on a Flax NNX model.

    ``loss`` is the mean over the loss's cases (every position of ``model(x)`` but its last
    axis) of:

    * ``"softmax_cross_entropy"``: ``-log softmax(z)[y]`` (``y`` integer labels of shape
      ``z.shape[:-1]``) or ``-sum y log softmax(z)`` (``y`` probabilities shaped like ``z``).
      A negative integer label (padding of a right-padded sentence, PyTorch's
      ``ignore_index``) is no loss case: the loss is the mean over the others, and the case
      adds nothing to the gradient or to ``G``; rows of layers applied per case (an embedding
      lookup, a per-token dense layer) are left out of ``A`` too, while a recurrent cell's
      per-step rows all count;
    * ``"sigmoid_cross_entropy"``: ``sum_k log(1 + e^{z_k}) - y_k z_k``;
    * ``"squared_error"``: ``sum_k (z_k - y_k)^2`` (``optax.squared_error`` summed over the
      output axis), the negative log-likelihood of ``N(z, I/2)`` up to a constant.

    ``grads`` is its gradient with respect to the model's ``nnx.Param`` variables (an
    ``nnx.State``, as ``nnx.grad`` returns), ``curvature`` a dict ``{layer name:
    KFACFactors}`` for every ``nnx.Linear``, ``nnx.Conv`` and ``nnx.Embed`` of the model
    (layer name: the module's path, ``"layers/0"``), to pass to ``optlab.scale_by_kfac`` /
    ``optlab.kfac`` as ``update(..., curvature=curvature)``. Factor definitions, capture and the
    ``sharing`` rules: :mod:`optlab._src.kfac_curvature`. Non-parameter state the forward pass
    changes (BatchNorm statistics, RNG counts) is written back to ``model``, as
    ``nnx.value_and_grad`` does.

    One forward pass; one backward pass for ``fisher="empirical"`` (the factors' ``g`` come from
    the data targets, the same pass that gives ``grads``), two for ``fisher="true"`` (the
    second pulls back a loss whose targets are sampled from the model's predictive
    distribution with ``key``: categorical, Bernoulli, or ``N(z, I/2)``).

    Args:
      loss: ``"softmax_cross_entropy"``, ``"sigmoid_cross_entropy"`` or ``"squared_error"``.
      fisher: ``"true"`` (sampled targets, Martens & Grosse 2015) or ``"empirical"``.
      sharing: ``"expand"`` (default) or ``"reduce"`` for layers applied over extra axes or
        several times (Eschenhagen et al. 2023).

    The returned function's ``compute_curvature`` (a Python bool, default True): when False,
    ``curvature`` is the empty dict and costs nothing (no second backward pass, no factor
    products); :func:`optlab.scale_by_kfac` reads ``{}`` as "no new curvature this step" and
    keeps its factors. Computing the curvature every ``k``-th step only (kfac-jax's
    ``curvature_update_period``) is ``compute_curvature=(step % k == 0)`` with a step function
    jitted for each value (``static_argnames``).

    Returns:
      The function. It raises ``ValueError`` for a model with no supported layer, an ``x``/``y``
      mismatch, or a missing ``key`` with ``fisher="true"``. Layers called inside
      ``jax.lax.scan`` / ``nnx.scan`` cannot be captured (the call happens in another trace):
      unroll such loops in Python; stock ``nnx.RNN`` layers are unrolled for you.

    References:
      - J. Martens, R. Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
        Curvature", ICML 2015.
      - R. Grosse, J. Martens, "A Kronecker-factored approximate Fisher matrix for convolution
        layers", ICML 2016.
      - R. Eschenhagen, A. Immer, R. E. Turner, F. Schneider, P. Hennig, "Kronecker-Factored
        Approximate Curvature for Modern Neural Network Architectures", NeurIPS 2023.

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> from flax import nnx
      >>> model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
      >>> vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "true")
      >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
      >>> loss, grads, curvature = vg(model, x, y, key=jax.random.key(0))
      >>> curvature[""].a.shape, curvature[""].g.shape
      ((5, 5), (3, 3))
    """
    check_choice("loss", loss, LOSSES)
    check_choice("fisher", fisher, FISHER_TYPES)
    check_choice("sharing", sharing, SHARING)

    def value_and_grad(model, x, y, *, key=None, compute_curvature=True):
        from flax import nnx

        if not isinstance(compute_curvature, bool | np.bool_):
            raise ValueError(
                "compute_curvature must be a Python bool (it changes what is computed: jit the "
                f"step once for each value), got {compute_curvature!r}"
            )
        if fisher == "true" and key is None and compute_curvature:
            raise ValueError("kfac_value_and_grad(fisher='true') needs key= (a PRNG key)")
        layers = find_layers(model)
        if not layers:
            raise ValueError(
                "model has no supported layer: kfac_value_and_grad captures nnx.Linear, "
                "nnx.Conv and nnx.Embed (stock forward passes)"
            )
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        y = jnp.asarray(y)

        def forward(p, perturbations):
            m = nnx.merge(graphdef, p, rest, copy=True)
            found = find_layers(m)
            # Stock nnx.RNN loops run their cell under nnx.scan, in another trace: unroll them
            # in Python here (same computation) so their layers' calls can be captured.
            for _, module in nnx.iter_modules(m):
                if _is_stock_rnn(module):
                    module.__class__ = _unrolled_rnn_class(type(module))
            names = {}
            for name, (_, module) in found.items():
                module.__class__ = _tapped_class(type(module))
                names[id(module)] = name
            tape = _Tape(names, perturbations)
            _ACTIVE.append(tape)
            try:
                out = m(x)
            finally:
                _ACTIVE.pop()
            return out, (tape, nnx.state(m, nnx.Not(nnx.Param)))

        # Trace once for the shapes of every call's output (no computation is run).
        shapes: dict[str, list[jax.ShapeDtypeStruct]] = {}

        def probe(p):
            out, (tape, _) = forward(p, None)
            shapes.update(tape.shapes)
            return out

        jax.eval_shape(probe, params)
        missing = [n for n in layers if not shapes.get(n)]
        perturbations = {
            n: [jnp.zeros(s.shape, s.dtype) for s in shapes[n]] for n in layers if n not in missing
        }

        def primal(p, e):
            out, (tape, new_rest) = forward(p, e)
            return out, (tape.inputs, new_rest)

        out, pullback, (inputs, new_rest) = jax.vjp(primal, params, perturbations, has_aux=True)
        _check_targets(loss, out, y)
        if loss == "softmax_cross_entropy" and jnp.issubdtype(y.dtype, jnp.integer):
            # Negative labels (padding) are no loss case: no loss, gradient or factor rows.
            case_mask = (y >= 0).astype(out.dtype)
            y = jnp.maximum(y, 0)
            num_cases = jnp.maximum(jnp.sum(case_mask), 1.0)
        else:
            case_mask = None
            num_cases = int(jnp.size(out) // out.shape[-1])

        def summed(z, targets):
            per_case = _per_case_loss(loss, z, targets)
            return jnp.sum(per_case if case_mask is None else per_case * case_mask)

        total, cotangent = jax.value_and_grad(summed)(out, y)
        param_grads, data_preact = pullback(cotangent)
        grads = jax.tree.map(lambda g: g / num_cases, param_grads)

        def factors():
            preact = data_preact
            if fisher == "true":
                sampled = _sample_targets(loss, key, out)
                _, preact = pullback(jax.grad(summed)(out, sampled))
            return {
                name: _layer_factors(
                    kind, module, inputs[name], preact[name], num_cases, sharing, case_mask
                )
                for name, (kind, module) in layers.items()
                if name not in missing
            }

        # No new curvature: the empty dict, which scale_by_kfac reads as "factors unchanged".
        curvature = factors() if compute_curvature else {}
        nnx.update(model, new_rest)
        return total / num_cases, grads, curvature

    return value_and_grad


__all__ = [
    "FISHER_TYPES",
    "LOSSES",
    "SHARING",
    "KFACFactors",
    "kfac_dense_factors",
    "kfac_embed_factors",
    "find_layers",
    "kfac_value_and_grad",
    "layer_name",
]
