"""XLA compile time of every optlab optimizer on deep models, against ``optax.adamw``.

Issue 18: per-leaf code makes compile time grow with depth. This script measures, for each
optimizer and each model depth, the time to trace + lower (``jax.jit(step).lower``) and to
compile (``Lowered.compile``) one jitted step, and counts what XLA compiled:

* ``hlo ops``: instructions of the optimized HLO module (``Compiled.as_text()``), every
  computation (fusion bodies, loop bodies, conditional branches) included;
* ``kernels``: top-level instructions of those computations that launch work (``fusion``,
  ``custom-call``, ``dot``, ``while``, ``conditional``, ``copy``, ... i.e. everything except
  ``parameter``, ``constant``, ``tuple``, ``get-tuple-element``, ``bitcast``), outside fusion
  bodies: the kernels an accelerator would launch (CPU thunks);
* ``distinct fusions``: fusion bodies that still differ once instruction names and metadata
  are stripped. XLA generates code once per distinct body and reuses it for identical ones,
  so compile time follows this count (about 15 ms of CPU time per distinct fusion, against
  under 1 ms per reused one, measured on the project's CPU). A slice at a constant offset is
  a distinct body per offset; optlab's optimizers write the rows at which they cut layers out
  of stacked blocks with int32 digits kept in their state (runtime values), so that layers of
  one shape share their kernels.

Models (abstract: ``jax.ShapeDtypeStruct`` only, nothing is allocated, so the 24-block
transformer's 97 M parameters cost no memory):

* ``mlp-<L>``: a plain MLP 64 -> 256 x (L - 2) -> 10 with biases (``layer_<i>/kernel``,
  ``layer_<i>/bias``): three distinct kernel shapes whatever the depth;
* ``transformer-<B>``: ``benchmarks/_workloads.transformer_params(n_blocks=B)`` (d_model 512,
  MLP 2048, vocab 8192, LayerNorms, untied embedding and head).

Steps (float32):

* ``update``: ``(params, state, grads) -> (params, state)``: ``tx.update`` +
  ``optax.apply_updates`` for optax.adamw, optlab.muon, optlab.shampoo, optlab.soap, and
  optlab.scale_by_kfac chained with SGD momentum (``optlab.kfac``), whose ``curvature`` (one
  ``KFACFactors`` per dense / embedding layer, shaped as ``kfac_value_and_grad`` returns them)
  is an input of the step;
* ``train``: the loss's gradient + the update, for optlab.sam(optax.adamw) (two gradients) and
  its base optax.adamw (one gradient), since SAM's step contains the model's backward pass.

Each configuration is compiled ``--repeats`` times with a fresh transform (no trace or compile
cache hit) and the minimum is kept (the least disturbed by other processes on a shared
machine; XLA's CPU compiler is mostly single-threaded). The other cores' load during the run
is reported (``OtherCpuLoad``).

Must show (issue 18): each optlab optimizer's compile time at most 3x optax.adamw's (same model,
same kind of step) and at most linear in depth: ``t(L_max) / t(L_min) <= L_max / L_min``.

Run (7 minutes for every optimizer, 2 compiles each, on the project's 2-core CPU when it is
otherwise idle, half of it SAM's and AdamW's transformer train steps; ``--quick`` for a smaller
sweep, ``--optimizers`` for a subset)::

    python benchmarks/compile_time.py [--out benchmarks/results/compile_time.md] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import OtherCpuLoad, machine_info, markdown_table  # noqa: E402
from _workloads import transformer_loss, transformer_params  # noqa: E402

import optlab  # noqa: E402

LR = 1e-3
MLP_IN, MLP_WIDTH, MLP_OUT, MLP_BATCH = 64, 256, 10, 32
TOKENS_BATCH, TOKENS_LENGTH = 2, 16

# -- models ----------------------------------------------------------------------------------------


def mlp_params(depth: int) -> dict[str, Any]:
    """Abstract parameters of a plain MLP with ``depth`` dense layers (biases included)."""
    dims = [MLP_IN] + [MLP_WIDTH] * (depth - 1) + [MLP_OUT]
    return {
        f"layer_{i}": {
            "kernel": jax.ShapeDtypeStruct((m, n), jnp.float32),
            "bias": jax.ShapeDtypeStruct((n,), jnp.float32),
        }
        for i, (m, n) in enumerate(zip(dims[:-1], dims[1:], strict=True))
    }


def mlp_loss(params: dict[str, Any], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    n = len(params)
    for i in range(n):
        x = x @ params[f"layer_{i}"]["kernel"] + params[f"layer_{i}"]["bias"]
        if i < n - 1:
            x = jnp.tanh(x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, y))


def abstract_transformer(n_blocks: int) -> dict[str, Any]:
    # transformer_params allocates zeros; eval_shape keeps only the shapes.
    return jax.eval_shape(lambda: transformer_params(n_blocks=n_blocks))


class Model:
    def __init__(self, name: str, depth: int, params: Any, loss: Callable, batch: Any):
        self.name, self.depth, self.params, self.loss, self.batch = name, depth, params, loss, batch


def make_model(family: str, depth: int) -> Model:
    if family == "mlp":
        batch = (
            jax.ShapeDtypeStruct((MLP_BATCH, MLP_IN), jnp.float32),
            jax.ShapeDtypeStruct((MLP_BATCH,), jnp.int32),
        )
        return Model(f"mlp-{depth}", depth, mlp_params(depth), mlp_loss, batch)
    batch = jax.ShapeDtypeStruct((TOKENS_BATCH, TOKENS_LENGTH + 1), jnp.int32)
    return Model(
        f"transformer-{depth}", depth, abstract_transformer(depth), transformer_loss, batch
    )


def kfac_curvature(params: dict[str, Any]) -> dict[str, optlab.KFACFactors]:
    """Abstract curvature for scale_by_kfac's default layer rule (``.../kernel`` with an optional
    ``.../bias`` sibling is a dense layer, ``.../embedding`` an embedding)."""
    out = {}
    leaves = jax.tree_util.tree_leaves_with_path(params)
    paths = {"/".join(str(k.key) for k in path): x.shape for path, x in leaves}
    for path, shape in paths.items():
        parent, _, last = path.rpartition("/")
        f32 = jnp.float32
        if last == "kernel":
            d_in = math.prod(shape[:-1]) + (paths.get(f"{parent}/bias") == (shape[-1],))
            out[parent] = optlab.KFACFactors(
                jax.ShapeDtypeStruct((d_in, d_in), f32),
                jax.ShapeDtypeStruct((shape[-1], shape[-1]), f32),
            )
        elif last == "embedding":
            out[parent] = optlab.KFACFactors(
                jax.ShapeDtypeStruct((shape[0],), f32),
                jax.ShapeDtypeStruct((shape[1], shape[1]), f32),
            )
    return out


# -- optimizers ------------------------------------------------------------------------------------


def update_optimizers() -> dict[str, Callable[[], optax.GradientTransformation]]:
    """Factories (a fresh transform per compile: no cache shared between repeats)."""
    return {
        "optax.adamw": lambda: optax.adamw(LR),
        "optlab.muon": lambda: optlab.muon(0.02, adam_learning_rate=LR),
        "optlab.shampoo": lambda: optlab.shampoo(LR),
        "optlab.soap": lambda: optlab.soap(LR),
        "optlab.kfac": lambda: optlab.kfac(LR, damping=1e-3),
    }


def train_optimizers() -> dict[str, Callable[[], optax.GradientTransformation]]:
    return {
        "optax.adamw": lambda: optax.adamw(LR),
        "optlab.sam(adamw)": lambda: optlab.sam(optax.adamw(LR), rho=0.05),
    }


def update_step(tx: optax.GradientTransformation, kfac: bool) -> Callable:
    if kfac:

        def step(params, state, grads, curvature):
            updates, state = tx.update(grads, state, params, curvature=curvature)
            return optax.apply_updates(params, updates), state

    else:

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

    return step


def train_step(tx: optax.GradientTransformation, loss: Callable, sam: bool) -> Callable:
    def step(params, state, batch):
        grad_fn = jax.grad(lambda p: loss(p, batch))
        grads = grad_fn(params)
        extra = {"grad_fn": grad_fn} if sam else {}
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    return step


# -- measuring -------------------------------------------------------------------------------------

_SKIP_OPS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s+(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\S+(?:\[[^\]]*\])?(?:\{[^}]*\})?\s+([\w\-]+)\("
)
_FUSED = re.compile(r"calls=%?([\w.\-]+)")


_METADATA = re.compile(r", metadata=\{[^}]*\}")
_NAME = re.compile(r"%[\w.\-]+")


def hlo_counts(text: str) -> dict[str, int]:
    """``hlo_ops`` (every instruction), ``kernels`` (launching instructions outside fusion
    bodies) and ``distinct fusions`` (fusion bodies that differ once instruction names and
    metadata are stripped: XLA generates code once per distinct body, the main cost of its
    compile time) of an optimized HLO module's text."""
    fused: set[str] = set()
    per_computation: dict[str, list[str]] = {}
    bodies: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("{", 1)[0].split("(", 1)[0]:
            current = head.group(2)
            per_computation[current] = []
            bodies[current] = []
            continue
        op = _INSTRUCTION.match(line)
        if op and current is not None:
            per_computation[current].append(op.group(1))
            bodies[current].append(_NAME.sub("%", _METADATA.sub("", line)).strip())
            if op.group(1) == "fusion":
                fused.update(_FUSED.findall(line))
    distinct = len({"\n".join(bodies[name]) for name in fused if name in bodies})
    hlo_ops = sum(len(ops) for ops in per_computation.values())
    kernels = sum(
        1
        for name, ops in per_computation.items()
        if name not in fused
        for op in ops
        if op not in _SKIP_OPS
    )
    return {"hlo_ops": hlo_ops, "kernels": kernels, "distinct_fusions": distinct}


def compile_once(step: Callable, args: tuple[Any, ...]) -> dict[str, Any]:
    jitted = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return {"lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0, "compiled": compiled}


def measure(
    make_tx: Callable[[], optax.GradientTransformation],
    model: Model,
    kind: str,
    name: str,
    repeats: int,
) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    for _ in range(repeats):
        tx = make_tx()
        state = jax.eval_shape(tx.init, model.params)
        if kind == "train":
            step = train_step(tx, model.loss, sam=name.startswith("optlab.sam"))
            args: tuple[Any, ...] = (model.params, state, model.batch)
        else:
            kfac = name == "optlab.kfac"
            step = update_step(tx, kfac)
            args = (model.params, state, model.params)
            if kfac:
                args += (kfac_curvature(model.params),)
        r = compile_once(step, args)
        if best is None or r["total_s"] < best["total_s"]:
            best = r
    assert best is not None
    counts = hlo_counts(best.pop("compiled").as_text())
    return {
        "model": model.name,
        "family": model.name.split("-")[0],
        "depth": model.depth,
        "leaves": len(jax.tree.leaves(model.params)),
        "optimizer": name,
        "step": kind,
        **{k: best[k] for k in ("lower_s", "compile_s", "total_s")},
        **counts,
    }


def warm_up() -> None:
    """JAX and XLA's one-time start-up costs, outside every measurement."""
    measure(lambda: optax.adamw(LR), make_model("mlp", 3), "update", "optax.adamw", 1)


# -- report ----------------------------------------------------------------------------------------


def analyse(results: list[dict[str, Any]]) -> tuple[list[list[Any]], list[str]]:
    """Rows of the table and the must-show verdicts."""
    base = {(r["model"], r["step"]): r for r in results if r["optimizer"] == "optax.adamw"}
    rows = []
    for r in results:
        b = base[(r["model"], r["step"])]
        r["ratio_adamw"] = r["total_s"] / b["total_s"]
        rows.append(
            [
                r["model"],
                r["leaves"],
                r["step"],
                r["optimizer"],
                r["lower_s"],
                r["compile_s"],
                r["total_s"],
                r["ratio_adamw"],
                r["hlo_ops"],
                r["kernels"],
                r["distinct_fusions"],
            ]
        )
    verdicts = []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["family"], r["step"], r["optimizer"]), []).append(r)
    for (family, step, name), rs in groups.items():
        rs.sort(key=lambda r: r["depth"])
        lo, hi = rs[0], rs[-1]
        growth = hi["total_s"] / lo["total_s"]
        depth_ratio = hi["depth"] / lo["depth"]
        worst = max(r["ratio_adamw"] for r in rs)
        kernel_growth = hi["kernels"] / lo["kernels"]
        if name == "optax.adamw":
            verdicts.append(
                f"- {family} ({step} step), optax.adamw: compile x{growth:.2f} from depth "
                f"{lo['depth']} to {hi['depth']} (x{depth_ratio:g} deeper), kernels "
                f"x{kernel_growth:.2f}"
            )
            continue
        # Issue 18's target is stated on the deepest models (100-layer MLP, 24 blocks); the
        # shallower ones, where a fixed cost weighs more, are reported as the worst ratio.
        deepest = hi["ratio_adamw"]
        ok_ratio = deepest <= 3.0
        ok_linear = growth <= depth_ratio
        verdicts.append(
            f"- {family} ({step} step), {name}: "
            f"{'PASS' if ok_ratio else 'FAIL'} {deepest:.2f}x optax.adamw at depth {hi['depth']} "
            f"(target <= 3x; worst over depths {worst:.2f}x); "
            f"{'PASS' if ok_linear else 'FAIL'} compile x{growth:.2f} from depth {lo['depth']} "
            f"to {hi['depth']} (linear: x{depth_ratio:g}), kernels x{kernel_growth:.2f}"
        )
    return rows, verdicts


HEADERS = [
    "model",
    "leaves",
    "step",
    "optimizer",
    "lower s",
    "compile s",
    "total s",
    "total / adamw",
    "hlo ops",
    "kernels",
    "distinct fusions",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/compile_time.md")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mlp-depths", default="25,50,100")
    parser.add_argument("--transformer-blocks", default="6,12,24")
    parser.add_argument(
        "--optimizers", default=None, help="comma-separated subset (optax.adamw always runs)"
    )
    parser.add_argument("--quick", action="store_true", help="depths 5,10 and blocks 1,2")
    args = parser.parse_args(argv)
    mlp_depths = [5, 10] if args.quick else [int(d) for d in args.mlp_depths.split(",") if d]
    blocks = [1, 2] if args.quick else [int(d) for d in args.transformer_blocks.split(",") if d]
    wanted = None if args.optimizers is None else set(args.optimizers.split(",")) | {"optax.adamw"}

    warm_up()
    results = []
    with OtherCpuLoad() as load:
        t_start = time.perf_counter()
        for family, depths in (("mlp", mlp_depths), ("transformer", blocks)):
            for depth in depths:
                model = make_model(family, depth)
                for kind, table in (("update", update_optimizers()), ("train", train_optimizers())):
                    for name, make_tx in table.items():
                        if wanted is not None and name not in wanted:
                            continue
                        r = measure(make_tx, model, kind, name, args.repeats)
                        results.append(r)
                        print(
                            f"{model.name:16s} {kind:6s} {name:20s} lower {r['lower_s']:6.2f} s "
                            f"compile {r['compile_s']:6.2f} s  hlo {r['hlo_ops']:6d} "
                            f"kernels {r['kernels']:5d} distinct {r['distinct_fusions']:4d}",
                            flush=True,
                        )
        elapsed = time.perf_counter() - t_start
    rows, verdicts = analyse(results)
    info = machine_info()
    command = "python benchmarks/compile_time.py" + (" " + " ".join(argv) if argv else "")
    if argv is None and len(sys.argv) > 1:
        command = "python benchmarks/compile_time.py " + " ".join(sys.argv[1:])
    lines = [
        "## Compile time on deep models (issue 18)",
        "",
        f"Command: `{command}`",
        "",
        "Machine: "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + f"; other processes kept {load.cores:.2f} cores busy on average during the "
        f"{elapsed:.0f} s run.",
        "",
        "Time to trace + lower (`lower s`) and to XLA-compile (`compile s`) one jitted step, "
        f"min of {args.repeats} compiles with a fresh transform; `total / adamw` against "
        "optax.adamw on the same model and step kind; `hlo ops`, `kernels` and `distinct "
        "fusions` counted in the optimized HLO (script docstring).",
        "",
        markdown_table(rows, HEADERS),
        "",
        *verdicts,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
