"""Argument checks shared by every loss: namespaces, devices, dtypes, shapes, options.

Everything here is cheap (metadata only) except :func:`check_labels_in_range`
and :func:`check_weights_valid`, which look at values and therefore run only on
eager host arrays (``Ops.is_eager``). The losses call these checks once, at their
public entry, and compute from what the checks return.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Literal, get_args

from ._backends import is_array, namespace_of, ops_for
from ._compat import Array as Array
from ._compat import ArrayT as ArrayT
from ._ops import NumpyOps, Ops

Reduction = Literal["none", "sum", "mean"]
"""The ``reduction`` option of the losses: mypy rejects any other string."""

REDUCTIONS: tuple[Reduction, ...] = get_args(Reduction)


def ops_of(named: dict[str, Array | None], xp: ModuleType | None, *, optional: tuple[str, ...] = ()) -> Ops:
    """The :class:`~._ops.Ops` of the namespace shared by the named arrays (``None`` entries in
    ``optional`` are skipped), or of ``xp`` if given.

    Raises ``TypeError`` naming the argument when something is not an array, or
    when the arrays come from two libraries, and ``ValueError`` when they live on
    two devices.
    """
    present = []
    for name, a in named.items():
        if a is None and name in optional:
            continue
        if not is_array(a):
            raise TypeError(_not_an_array(name, a))
        present.append((name, a))
    if xp is None:
        try:
            xp = namespace_of([a for _, a in present])
        except TypeError:
            kinds = ", ".join(f"{name}: {type(a).__module__}.{type(a).__name__}" for name, a in present)
            raise TypeError(
                f"arrays from more than one array library in one call ({kinds}); "
                "pass arrays of a single library"
            ) from None
    ops = ops_for(xp)
    if not isinstance(ops, NumpyOps):  # NumPy has one device
        _check_one_device(present, ops)
    return ops


def _not_an_array(name: str, value: Any) -> str:
    """Why ``value`` cannot be used as the array ``name``, and what to do."""
    kind = type(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # another library's array
        library = kind.__module__.partition(".")[0]
        return (
            f"{name} is a {kind.__module__}.{kind.__name__}, an array of {library}, which array-api-compat "
            "gives no array API namespace for (NumPy, CuPy, PyTorch, JAX, Dask, ndonnx, array-api-strict "
            "and libraries whose arrays have __array_namespace__ work); convert it to one of those, e.g. "
            f"with numpy.asarray({name}) or the other library's from_dlpack"
        )
    return (
        f"{name} must be an array, got {kind.__name__}; convert it with the "
        f"namespace of your other arrays first, e.g. xp.asarray({name})"
    )


def _check_one_device(named: list[tuple[str, Array]], ops: Ops) -> None:
    """Raise ``ValueError`` naming two of the arrays that live on different devices.

    Traced arrays (inside jax.jit or jax.grad) have no device (None) until they run: not compared.
    """
    first_name, first_device = None, None
    for name, a in named:
        d = ops.device(a)
        if d is None:
            continue
        if first_device is None:
            first_name, first_device = name, d
        elif d != first_device:
            raise ValueError(
                f"{name} is on device {d!r} but {first_name} is on {first_device!r}; "
                "move all arrays to one device"
            )


def compute_dtype(dtype: Any, xp: ModuleType) -> Any:
    """The dtype to accumulate in: float32 for half precision, else ``dtype`` itself."""
    return dtype if dtype in (xp.float32, xp.float64) else xp.float32


def in_compute_dtype(x: Array, xp: ModuleType) -> Array:
    """``x`` in its :func:`compute_dtype`: ``x`` itself when float32 or float64, else a float32 copy."""
    return x if x.dtype in (xp.float32, xp.float64) else xp.astype(x, xp.float32)


def check_floating(name: str, x: Array, xp: ModuleType) -> None:
    # The common dtypes first: isdtype is a Python call that costs more than this comparison.
    if x.dtype not in (xp.float32, xp.float64) and not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")


def check_real(name: str, x: Array, xp: ModuleType) -> None:
    if not xp.isdtype(x.dtype, ("real floating", "integral", "bool")):
        raise TypeError(f"{name} must have a real or boolean dtype, got {x.dtype}")


def normalize_axis(axis: int, ndim: int, name: str = "logits") -> int:
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {name} with {ndim} dimension(s)")
    return axis % ndim


def move_axis(x: Array, source: int, destination: int, xp: ModuleType) -> Array:
    """``moveaxis(x, source, destination)``, as ``permute_dims`` (``torch.func.vmap`` has no batching
    rule for ``torch.moveaxis``), and ``x`` itself where nothing moves."""
    ndim = x.ndim
    source, destination = source % ndim, destination % ndim
    if source == destination:
        return x
    order = [d for d in range(ndim) if d != source]
    order.insert(destination, source)
    return xp.permute_dims(x, tuple(order))


def class_axis_last(x: Array, axis: int, xp: ModuleType) -> Array:
    """Move the (normalized) class ``axis`` of ``x`` to the end, without a copy when it is already last."""
    return move_axis(x, axis, -1, xp)


def check_logits(logits: Array, axis: int, xp: ModuleType, name: str = "logits") -> int:
    """Check dtype and shape of the array ``logits`` (called ``name``); return ``axis`` normalized to
    be non-negative."""
    check_floating(name, logits, xp)
    if logits.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the classes), got a 0-d array")
    axis = normalize_axis(axis, logits.ndim, name)
    if logits.shape[axis] == 0:
        raise ValueError(f"{name} has no classes: its axis {axis} has size 0 (shape {logits.shape})")
    return axis


def check_labels(
    labels: Array, expected_shape: tuple[Any, ...], xp: ModuleType, name: str = "labels"
) -> None:
    if labels.dtype != xp.int64 and not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if not same_shape(tuple(labels.shape), tuple(expected_shape)):
        raise ValueError(
            f"{name} has shape {tuple(labels.shape)} but logits without its class axis has shape "
            f"{tuple(expected_shape)}; they must match"
        )


def check_broadcastable(name: str, x: Array, shape: tuple[Any, ...], target: str) -> None:
    """Raise unless ``x`` broadcasts to ``shape`` without changing it (``target`` names the shape)."""
    xs = tuple(x.shape)
    trailing = shape[len(shape) - len(xs) :]
    # a == 1 or a == b, not a in (1, b): torch.compile evaluates `in` on a symbolic size as False
    ok = len(xs) <= len(shape) and all(
        a == 1 or a == b or unknown(a) or unknown(b) for a, b in zip(xs, trailing, strict=True)
    )
    if not ok:
        raise ValueError(
            f"{name} has shape {xs}, which does not broadcast to the {target} shape {tuple(shape)}"
        )


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def as_index(name: str, value: Any) -> int:
    """``value`` as a Python int (NumPy integers and the like are accepted, a bool is not);
    ``TypeError`` otherwise."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def as_real(name: str, value: Any) -> float:
    """``value`` as a Python float (ints and NumPy's real scalars are accepted, a bool is not);
    ``TypeError`` otherwise."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{name} must be a real number, got {type(value).__name__}")


def check_bool(name: str, value: bool) -> None:
    """``TypeError`` unless ``value`` is a bool (a flag given as a string or an array is a mistake)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in [0, 1]; ``TypeError`` or ``ValueError`` naming it otherwise."""
    fraction = as_real(name, value)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return fraction


def check_labels_in_range(
    labels: Array, num_classes: int | None, valid: Array | None, xp: ModuleType, name: str = "labels"
) -> None:
    """Raise ``ValueError`` naming a counted label outside ``[0, num_classes)`` (eager arrays only;
    ``num_classes=None``: negative labels)."""
    bad = labels < 0 if num_classes is None else (labels < 0) | (labels >= num_classes)
    if valid is not None:
        bad = bad & valid
    if bool(xp.any(bad)):
        zero = xp.zeros_like(labels)
        if num_classes is None:
            value = int(xp.min(xp.where(bad, labels, zero)))
            raise ValueError(f"{name} contains {value}; class indices must be non-negative")
        largest = int(xp.max(xp.where(bad, labels, zero)))
        value = largest if largest >= num_classes else int(xp.min(xp.where(bad, labels, zero)))
        raise ValueError(
            f"{name} contains {value}, outside the valid range [0, {num_classes}) of class indices"
        )


def check_weights_valid(name: str, weights: Array, xp: ModuleType) -> None:
    """Raise ``ValueError`` for negative or NaN weights (eager arrays only)."""
    if weights.dtype != xp.bool and not bool(xp.all(weights >= 0)):  # NaN >= 0 is false too
        raise ValueError(f"{name} must be non-negative and not NaN; it contains negative or NaN values")


def check_same_length(named: dict[str, Sequence[Any]]) -> int:
    lengths = {name: len(seq) for name, seq in named.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise ValueError(f"sequences of per-step arrays must have the same length ({detail})")
    return next(iter(lengths.values()))


def check_chunk_size(chunk_size: int | None) -> int | None:
    """``chunk_size`` as None or a positive Python int; ``TypeError``/``ValueError`` naming it otherwise."""
    if chunk_size is None:
        return None
    try:
        rows = as_index("chunk_size", chunk_size)
    except TypeError:
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}") from None
    if rows < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    return rows


def as_layout_of(grad: Array, like: Array, axis: int, xp: ModuleType) -> Array:
    """A classes-last gradient back in the layout (class ``axis``) and dtype of the input ``like``."""
    grad = move_axis(grad, -1, axis, xp)
    return xp.astype(grad, like.dtype, copy=False)


def unknown(dimension: Any) -> bool:
    """Whether a dimension of a shape is unknown: the standard's None, or Dask's NaN."""
    return dimension is None or dimension != dimension


def same_shape(first: tuple[Any, ...], second: tuple[Any, ...]) -> bool:
    """Whether two shapes can be the same: equal where both dimensions are known."""
    return first == second or (
        len(first) == len(second)
        and all(a == b or unknown(a) or unknown(b) for a, b in zip(first, second, strict=True))
    )


def size_of(shape: tuple[Any, ...]) -> int | None:
    """The number of elements of ``shape``; None where a dimension is unknown (the standard's None,
    Dask's NaN), so that the caller takes a path that needs no size."""
    try:
        total = math.prod(shape)
    except TypeError:  # None
        return None
    return None if total != total else total  # NaN


def broadcast_like(x: Array, like: Array, xp: ModuleType) -> Array:
    """``x`` broadcast to the shape of the array ``like``, which may hold unknown dimensions."""
    if size_of(tuple(like.shape)) is not None:
        return xp.broadcast_to(x, tuple(like.shape))
    return x * xp.ones_like(like, dtype=x.dtype)


def reshape_target(shape: tuple[Any, ...]) -> tuple[int, ...]:
    """``shape`` for ``xp.reshape``: an unknown dimension (one at most) as -1."""
    return tuple(-1 if unknown(dimension) else dimension for dimension in shape)
