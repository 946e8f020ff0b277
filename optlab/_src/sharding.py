r"""Sharded optimizer state on a device mesh: :func:`state_sharding`.

Shampoo, SOAP and K-FAC keep their Kronecker-factor statistics and factors (roots, eigenbases,
inverses) in flat buffers (:mod:`optlab._src.kronecker`). Built with ``mesh=`` (and
``mesh_axis=``), they lay those buffers out as ``[shards, row]`` with ``shards`` the size of the
mesh axis (:func:`optlab._src.kronecker.shard_layout`): row ``s`` holds device ``s``'s whole
statistics of every size, so sharding the leading axis gives each device ``1/shards`` of the
state, and each device refreshes only its own statistics (a ``jax.shard_map`` around the refresh
kernels; everything else is left to XLA's partitioner, ``jit`` as usual). The results are the
single-device ones: the padding statistics the split adds are never read.

:func:`state_sharding` returns the ``NamedSharding`` tree of ``tx.init(params)``, for
``jax.jit(tx.init, out_shardings=...)`` and the step's in/out shardings (what tearfree's
partition specs or ``optax.tree.map_params`` give, with the engine's buffers split):

* the engine's buffers (``ShampooState.stats`` / ``roots`` / the grafting moments,
  ``SoapState.stats`` / ``bases`` / ``mu`` / ``nu``, Shampoo's and K-FAC's
  momentum (``BlockMomentumState.mu``), ``KFACState.factors`` / ``inverses``:
  found by their state types anywhere in the state, under ``optax.chain``, ``partition``,
  ``masked``, ``inject_hyperparams``, ``MultiSteps``, the NaN guard) along ``axis``;
* parameter-shaped state (Adam's moments, momentum) like its parameter: replicated for data
  parallelism, or as the parameters are sharded (FSDP: the ``params`` are arrays, or
  ``jax.ShapeDtypeStruct``, with a ``NamedSharding``);
* everything else (counters, Muon's and SAM's other state) replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optlab._src.kronecker import Placement

__all__ = ["make_placement", "state_sharding"]


def make_placement(mesh: Mesh | None, mesh_axis: str) -> Placement:
    """The transforms' ``mesh`` / ``mesh_axis`` options, checked (ValueError otherwise)."""
    if mesh is None:
        return Placement()
    if not isinstance(mesh, Mesh):
        # A Mesh is callable (a context decorator): optax.inject_hyperparams takes it for a
        # schedule and passes what calling it returns, unless it is a static argument.
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__} (with "
            f"optax.inject_hyperparams pass static_args=('mesh',))"
        )
    if mesh_axis not in mesh.axis_names:
        raise ValueError(
            f"mesh_axis must be one of the mesh's axis names {tuple(mesh.axis_names)}, "
            f"got {mesh_axis!r}"
        )
    kind = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))[mesh_axis]
    if kind != AxisType.Auto:
        # Explicit axes type every intermediate's sharding, and the engine's gathers of the
        # buffers' diagonals (the NaN guard) have no unambiguous one: XLA's partitioner decides.
        raise ValueError(
            f"mesh_axis must be an Auto axis of the mesh (the engine leaves its layout to XLA's "
            f"partitioner), got {mesh_axis!r} of type {kind}: build the mesh with "
            f"jax.make_mesh(..., axis_types=(jax.sharding.AxisType.Auto, ...)) or "
            f"jax.sharding.Mesh(devices, names)"
        )
    return Placement(mesh, mesh_axis)


def _block_fields() -> dict[type, tuple[str, ...]]:
    # Imported here: the transforms import this module for make_placement.
    from optlab._src.blocked import BlockMomentumState
    from optlab._src.kfac import KFACState
    from optlab._src.shampoo import ShampooState
    from optlab._src.soap import SoapState

    return {
        ShampooState: ("stats", "roots", "graft"),
        SoapState: ("stats", "bases", "mu", "nu"),
        KFACState: ("factors", "inverses"),
        BlockMomentumState: ("mu",),
    }


def _param_sharding(leaf: Any, mesh: Mesh) -> NamedSharding:
    """A parameter's sharding on ``mesh`` (replicated unless it has a NamedSharding)."""
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
        return NamedSharding(mesh, sharding.spec)
    return NamedSharding(mesh, P())


def state_sharding(
    tx: optax.GradientTransformation, params: Any, mesh: Mesh, axis: str = "data"
) -> Any:
    """The ``NamedSharding`` tree of ``tx.init(params)`` on ``mesh``, the engine's state split
    along ``axis``.

    Args:
      tx: any optax transformation; Shampoo, SOAP and K-FAC in it must be built with
        ``mesh=mesh, mesh_axis=axis`` (their state is laid out for that many devices).
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``); a leaf with a
        ``NamedSharding`` (FSDP) gets its parameter-shaped state sharded like it, the others
        replicated.
      mesh: the device mesh.
      axis: the mesh axis the engine's buffers are split over.

    Returns:
      A tree of ``NamedSharding`` with the structure of ``tx.init(params)``.

    Raises:
      ValueError: ``axis`` is not a mesh axis, or a Kronecker-factor state was laid out for
        another number of devices than ``mesh.shape[axis]`` (built without ``mesh=``, or
        with another mesh axis).

    Example:
      >>> import jax, jax.numpy as jnp, optlab
      >>> auto = (jax.sharding.AxisType.Auto,)
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=auto)
      >>> params = {"w": jnp.ones((8, 4))}
      >>> tx = optlab.shampoo(1e-2, mesh=mesh, mesh_axis="data")
      >>> shardings = optlab.state_sharding(tx, params, mesh, axis="data")
      >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(
            f"axis must be one of the mesh's axis names {tuple(mesh.axis_names)}, got {axis!r}"
        )
    abstract = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, P())
    param_shardings = jax.tree.map(lambda x: _param_sharding(x, mesh), params)

    def masked(x: Any) -> bool:
        # What optax.masked / partition leave where a parameter is masked out: kept as it is.
        return isinstance(x, optax.MaskedNode)

    base = optax.tree.map_params(
        tx,
        lambda x, s: x if masked(x) else s,
        abstract,
        param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=masked,
    )
    fields = _block_fields()
    size = int(mesh.shape[axis])

    def split(state: Any, shardings: Any) -> Any:
        names = fields.get(type(state))
        if names is None:
            return shardings

        def buffer_sharding(name: str, buffer: Any, sharding: NamedSharding) -> NamedSharding:
            if not buffer.shape:  # a counter next to a buffer (the grafting state's)
                return sharding
            shards = buffer.shape[0] if len(buffer.shape) == 2 else 1
            if shards != size:
                raise ValueError(
                    f"{type(state).__name__}.{name} is laid out for {shards} device(s), but "
                    f"mesh axis {axis!r} has {size}: build the optimizer with mesh=mesh, "
                    f"mesh_axis={axis!r}"
                )
            # A one-device layout (flat buffer) only meets an axis of size 1.
            return NamedSharding(mesh, P(axis, *[None] * (len(buffer.shape) - 1)))

        # A field is a buffer or an optax state holding one (Shampoo's grafting state).
        out = {
            name: jax.tree.map(
                lambda b, s, name=name: buffer_sharding(name, b, s),
                getattr(state, name),
                getattr(shardings, name),
            )
            for name in names
        }
        return shardings._replace(**out)

    return jax.tree.map(split, abstract, base, is_leaf=lambda x: type(x) in fields)
