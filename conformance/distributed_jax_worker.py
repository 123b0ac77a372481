"""``test_distributed.py``'s JAX check on 8 host devices: ``python distributed_jax_worker.py 0 1 PORT OUT``.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (JAX must not be initialised
before). Writes ``OUT/report.json``: for each case the errors of the value and gradient of
``jit(value_and_grad(shard_map(vocab-parallel loss)))`` against the single-device loss, and the
compiled HLO's collectives (the number of all-gathers, the largest all-reduce in elements);
the same errors for ``linear_cross_entropy`` and ``ctc_loss`` in ``shard_map`` over a batch split
across the devices (their custom VJPs); and, for issue 17's item 3, the bytes that each compiled
program communicates for the loss of ``hidden @ weight.T`` under a 2-D data x model mesh: optax on
the materialised logits, ``linear_cross_entropy`` under ``jit`` with sharded inputs, and the
vocab-parallel linear loss in ``shard_map``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import arrayloss as al
from arrayloss.distributed import (
    jax_collectives,
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)

jax.config.update("jax_enable_x64", True)
DEVICES = 8
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s64": 8, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}
SHAPE = re.compile(r"\b(f64|f32|bf16|f16|s64|s32|u32|pred|s8|u8)\[([0-9,]*)\]")


def collectives_in(hlo: str) -> dict[str, list[int]]:
    """The result sizes in bytes of each collective of a compiled HLO text, by kind."""
    found: dict[str, list[int]] = {kind: [] for kind in COLLECTIVES}
    for line in hlo.splitlines():
        for kind in COLLECTIVES:
            match = re.search(rf"=\s*(.*?)\s{kind}(-start)?\(", line)
            if match is None:
                continue
            sizes = [
                BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                for dtype, dims in SHAPE.findall(match.group(1))
            ]
            found[kind].append(sum(sizes))
    return found


def compiled_text(f: Any, *args: Any) -> str:
    return str(jax.jit(f).lower(*args).compile().as_text())


def logits_case(mesh: Any, options: dict[str, Any], reduction: str) -> dict[str, float]:
    rows, classes = 16, 64
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(rows, classes)) * 3.0)
    labels = jnp.asarray(rng.integers(0, classes, size=rows))
    given = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}

    def local(shard: Any, y: Any) -> Any:
        start = jax.lax.axis_index("vocab") * shard.shape[-1]
        out = vocab_parallel_cross_entropy(
            shard, y, vocab_start=start, collectives=jax_collectives("vocab"), reduction=reduction, **given
        )
        return jnp.sum(out)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P())

    def full(z: Any, y: Any) -> Any:
        return jnp.sum(al.sparse_softmax_cross_entropy(z, y, reduction=reduction, **given))

    placed = jax.device_put(logits, NamedSharding(mesh, P(None, "vocab")))
    value, grad = (np.asarray(a) for a in jax.jit(jax.value_and_grad(sharded))(placed, labels))
    expected, expected_grad = (np.asarray(a) for a in jax.value_and_grad(full)(logits, labels))
    found = collectives_in(compiled_text(jax.value_and_grad(sharded), placed, labels))
    return {
        "value": float(expected),
        "value_error": float(abs(value - expected)),
        "grad_error": float(np.max(np.abs(grad - expected_grad))),
        "all_gathers": len(found["all-gather"]),
        "largest_all_reduce": max(found["all-reduce"]) // 8,  # elements of float64
        "per_row_limit": rows * 3 + 1,  # the rows' table of sums (at most 3 columns) and the class count
        "all_reduces": len(found["all-reduce"]),
    }


def linear_case(mesh: Any) -> dict[str, float]:
    rows, classes, features = 16, 64, 5
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(rows, features)))
    weight = jnp.asarray(rng.normal(size=(classes, features)))
    labels = jnp.asarray(rng.integers(0, classes, size=rows))
    options = {"label_smoothing": 0.1, "z_loss": 0.01, "ignore_index": int(labels[0])}

    def local(h: Any, w: Any, y: Any) -> Any:
        start = jax.lax.axis_index("vocab") * w.shape[0]
        return vocab_parallel_linear_cross_entropy(
            h, w, y, vocab_start=start, collectives=jax_collectives("vocab"), reduction="mean",
            chunk_size=4, **options,
        )  # fmt: skip

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("vocab", None), P()), out_specs=P())
    placed = jax.device_put(weight, NamedSharding(mesh, P("vocab", None)))
    f = jax.value_and_grad(sharded, argnums=(0, 1))
    value, (d_hidden, d_weight) = jax.tree.map(np.asarray, jax.jit(f)(hidden, placed, labels))

    def full(h: Any, w: Any, y: Any) -> Any:
        return al.linear_cross_entropy(h, w, y, reduction="mean", **options)

    expected, (e_hidden, e_weight) = jax.tree.map(
        np.asarray, jax.value_and_grad(full, argnums=(0, 1))(hidden, weight, labels)
    )
    found = collectives_in(compiled_text(f, hidden, placed, labels))
    return {
        "value": float(expected),
        "value_error": float(abs(value - expected)),
        "grad_error": float(max(np.max(np.abs(d_hidden - e_hidden)), np.max(np.abs(d_weight - e_weight)))),
        "all_gathers": len(found["all-gather"]),
        "largest_all_reduce": max(found["all-reduce"]) // 8,
        "per_row_limit": rows * max(4, features) + 1,  # hidden's gradient: one row of D per row
        "all_reduces": len(found["all-reduce"]),
    }


def data_parallel_case(loss: str) -> dict[str, float]:
    """``linear_cross_entropy`` or ``ctc_loss`` (custom VJPs) inside ``shard_map`` with the batch split
    over 8 devices and the weight replicated: value and gradients against one device."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))  # the arrays are split on entry
    rng = np.random.default_rng(4)
    rows = 16
    if loss == "linear":
        arrays = (
            jnp.asarray(rng.normal(size=(rows, 5))),
            jnp.asarray(rng.normal(size=(12, 5))),
            jnp.asarray(rng.integers(0, 12, size=rows)),
            jnp.asarray(rng.uniform(0.0, 2.0, size=rows)),
        )

        def per_shard(h: Any, w: Any, y: Any, weights: Any) -> Any:
            return al.linear_cross_entropy(h, w, y, weights=weights, label_smoothing=0.1, reduction="sum")

        specs: tuple[Any, ...] = (P("data"), P(), P("data"), P("data"))
        argnums: tuple[int, ...] = (0, 1)
    else:
        arrays = (
            jnp.asarray(rng.normal(size=(rows, 6, 4))),
            jnp.asarray(rng.integers(1, 4, size=(rows, 2))),
            jnp.asarray(rng.integers(3, 7, size=rows)),
        )

        def per_shard(z: Any, y: Any, lengths: Any) -> Any:  # type: ignore[misc]
            return al.ctc_loss(z, y, logit_lengths=lengths, reduction="sum")

        specs, argnums = (P("data"), P("data"), P("data")), (0,)

    def total(*a: Any) -> Any:
        return jax.lax.psum(per_shard(*a), "data")

    sharded = jax.shard_map(total, mesh=mesh, in_specs=specs, out_specs=P())
    value, grads = jax.tree.map(np.asarray, jax.jit(jax.value_and_grad(sharded, argnums=argnums))(*arrays))
    expected, expected_grads = jax.tree.map(
        np.asarray, jax.value_and_grad(per_shard, argnums=argnums)(*arrays)
    )
    return {
        "value": float(expected),
        "value_error": float(abs(value - expected)),
        "grad_error": float(max(np.max(np.abs(g - e)) for g, e in zip(grads, expected_grads, strict=True))),
    }


def communication_2d(rows: int, classes: int, features: int, dtype: Any, run: bool = True) -> dict[str, Any]:
    """Bytes of the collectives of the compiled forward+backward, data(2) x model(4) mesh."""
    # Auto axes: XLA's partitioner places the collectives of the jit-ed programs
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rng = np.random.default_rng(2)
    hidden = jnp.asarray(rng.normal(size=(rows, features)), dtype=dtype)
    weight = jnp.asarray(rng.normal(size=(classes, features)) * 0.1, dtype=dtype)
    labels = jnp.asarray(rng.integers(0, classes, size=rows))
    h = jax.device_put(hidden, NamedSharding(mesh, P("data", None)))
    w = jax.device_put(weight, NamedSharding(mesh, P("model", None)))
    y = jax.device_put(labels, NamedSharding(mesh, P("data")))
    optax = __import__("optax")

    def materialised(h: Any, w: Any, y: Any) -> Any:
        logits = jnp.einsum("nd,cd->nc", h, w)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def fused(h: Any, w: Any, y: Any) -> Any:
        return al.linear_cross_entropy(h, w, y, reduction="mean")

    def local(h: Any, w: Any, y: Any) -> Any:
        start = jax.lax.axis_index("model") * w.shape[0]
        # the weight is replicated over "data": varying there, so that its gradient is summed over it
        w = jax.lax.pcast(w, ("data",), to="varying")
        total = vocab_parallel_linear_cross_entropy(
            h, w, y, vocab_start=start, collectives=jax_collectives("model"), reduction="sum"
        )
        return jax.lax.psum(total, "data") / rows

    vocab_parallel = jax.shard_map(
        local, mesh=mesh, in_specs=(P("data", None), P("model", None), P("data")), out_specs=P()
    )
    report: dict[str, Any] = {"rows": rows, "classes": classes, "features": features}
    report["dtype"] = jnp.dtype(dtype).name
    values = {}
    for name, f in (("optax_materialised", materialised), ("linear_cross_entropy_jit", fused),
                    ("vocab_parallel_shard_map", vocab_parallel)):  # fmt: skip
        g = jax.value_and_grad(f, argnums=(0, 1))
        try:
            found = collectives_in(compiled_text(g, h, w, y))
            if run:
                values[name] = float(jax.jit(g)(h, w, y)[0])
        except Exception as error:  # reported, not hidden: a program that does not compile here
            report[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            continue
        report[name] = {
            "bytes": sum(sum(v) for v in found.values()),
            "by_kind": {k: sum(v) for k, v in found.items() if v},
            "count": {k: len(v) for k, v in found.items() if v},
        }
    report["values"] = values
    return report


def main() -> None:
    out = Path(sys.argv[4])
    assert len(jax.devices()) == DEVICES, jax.devices()
    mesh = jax.make_mesh((DEVICES,), ("vocab",), axis_types=(jax.sharding.AxisType.Explicit,))
    weights = np.random.default_rng(3).uniform(0.0, 2.0, size=16)
    weights[0] = 0.0
    everything = {"weights": weights, "ignore_index": 5, "label_smoothing": 0.2, "z_loss": 0.01}
    cases = {
        "plain-none": logits_case(mesh, {}, "none"),
        "everything-mean": logits_case(mesh, everything, "mean"),
        "linear-everything-mean": linear_case(mesh),
    }
    report = {"cases": cases, "communication_2d": communication_2d(64, 512, 32, jnp.float32)}
    report["data_parallel"] = {loss: data_parallel_case(loss) for loss in ("linear", "ctc")}
    if len(sys.argv) > 5 and sys.argv[5] == "--large":
        report["communication_2d_large"] = communication_2d(4096, 32000, 256, jnp.float32, run=False)
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
