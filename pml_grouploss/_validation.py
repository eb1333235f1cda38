"""Argument and tensor checks shared by every public entry point.

Each check raises a ``TypeError``/``ValueError`` whose message names the argument and the fix.
Checks on tensor *values* (finiteness, ranges) read the device: call them once per forward,
never inside a loop.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Optional, Sequence

import torch


def is_real_number(value: object) -> bool:
    """A Python/NumPy real scalar or a one-element real tensor; ``bool`` is not a number."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    if torch.is_tensor(value) and value.numel() == 1:
        return not value.dtype.is_complex and value.dtype != torch.bool
    return False


def check_int(name: str, value: object, minimum: Optional[int] = None,
              maximum: Optional[int] = None, hint: str = "") -> int:
    """``value`` as an ``int`` (NumPy integers accepted, ``bool`` rejected) in
    ``[minimum, maximum]``; ``hint`` is appended to the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}"
                         + (f"; {hint}" if hint else ""))
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value}"
                         + (f"; {hint}" if hint else ""))
    return int(value)


def check_number(
    name: str,
    value: object,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    strict_minimum: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite ``float`` within ``[minimum, maximum]`` (``(minimum, ...`` if
    ``strict_minimum``); ``hint`` is appended to the message."""
    if not is_real_number(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    low_ok = minimum is None or (number > minimum if strict_minimum else number >= minimum)
    high_ok = maximum is None or number <= maximum
    if not math.isfinite(number) or not low_ok or not high_ok:
        bounds = [
            f"{'>' if strict_minimum else '>='} {minimum:g}" if minimum is not None else "",
            f"<= {maximum:g}" if maximum is not None else "",
        ]
        wanted = " and ".join(b for b in bounds if b)
        raise ValueError(
            f"{name} must be a finite number{' ' + wanted if wanted else ''}, got {value!r}"
            + (f"; {hint}" if hint else "")
        )
    return number


#: The largest weight of a loss term (GradML's ``w``, GroupLoss's ``nll_weight`` and
#: ``ce_weight``): larger ones only overflow the loss.
MAX_WEIGHT = 100.0


def seeded_generator(name: str, seed: object) -> Optional[torch.Generator]:
    """A CPU ``torch.Generator`` seeded with ``seed`` (an int that fits in 64 bits); ``None``
    for ``None``."""
    if seed is None:
        return None
    generator = torch.Generator()
    try:
        generator.manual_seed(check_int(name, seed))
    except (RuntimeError, ValueError, OverflowError):  # beyond torch's 64-bit seeds
        raise ValueError(f"{name} must fit in 64 bits, got {seed}") from None
    return generator


def check_bool(name: str, value: object) -> bool:
    """``value`` is a ``bool`` (or NumPy bool); ``bool("False")`` would be ``True``."""
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")
    if not isinstance(value, bool) and not numpy_bool:
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """``value`` is one of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_floating(name: str, tensor: torch.Tensor) -> None:
    """``tensor`` is a real floating-point tensor (integer values would be truncated)."""
    if not torch.is_tensor(tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {tensor.dtype}; "
            f"convert with {name}.float()"
        )


def check_rows(name: str, tensor: torch.Tensor) -> None:
    """``tensor`` is a floating-point ``(n, d)`` matrix with ``d >= 1``."""
    check_floating(name, tensor)
    if tensor.dim() != 2 or tensor.shape[1] == 0:
        raise ValueError(f"{name} must be (n, d) with d >= 1, got shape {tuple(tensor.shape)}")


def check_same_width(name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``tensor`` ``(n, d)`` and ``ref`` ``(r, d)`` are 2-D with the same ``d``."""
    if tensor.dim() != 2 or ref.dim() != 2 or tensor.shape[1] != ref.shape[1]:
        raise ValueError(
            f"{name} and {ref_name} must be (n, d) and (r, d) with the same embedding size d, "
            f"got {tuple(tensor.shape)} and {tuple(ref.shape)}"
        )


def check_finite(name: str, tensor: torch.Tensor, hint: str = "") -> None:
    """Every entry of ``tensor`` is finite (one device read)."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            f"{name} contain NaN or inf" + (f"; {hint}" if hint else "")
        )


def check_class_ids(name: str, labels: torch.Tensor) -> torch.Tensor:
    """``labels`` as an int64 tensor of class ids; any integer dtype is accepted."""
    if not torch.is_tensor(labels):
        raise TypeError(f"{name} must be a torch.Tensor of class ids, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(
            f"{name} must be an integer tensor of class ids, got dtype {labels.dtype}; "
            f"convert with {name}.long()"
        )
    return labels.long()


def check_pair_indices(indices_tuple: Sequence[torch.Tensor], n: int, n_ref: int) -> None:
    """``(a1, p, a2, n)`` are 1-D integer tensors, ``a1``/``p`` and ``a2``/``n`` of equal
    length, anchors in ``[0, n)``, positives and negatives in ``[0, n_ref)`` (one device read,
    for a caller's ``indices_tuple``: an index out of range fails inside torch, or on CUDA
    as a device-side assert)."""
    names = ("anchors of positive pairs", "positives", "anchors of negative pairs", "negatives")
    for name, t in zip(names, indices_tuple):
        if not torch.is_tensor(t) or t.dim() != 1 or t.dtype.is_floating_point or t.dtype in (
                torch.bool, torch.complex64, torch.complex128):
            raise TypeError(
                f"indices_tuple: the {name} must be a 1-D integer tensor, got "
                f"{getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}"
            )
    a1, p, a2, neg = indices_tuple
    if len(a1) != len(p) or len(a2) != len(neg):
        raise ValueError(
            f"indices_tuple: pairs (a1, p, a2, n) need len(a1) == len(p) and len(a2) == len(n), "
            f"got {len(a1)}, {len(p)}, {len(a2)}, {len(neg)}"
        )
    bounds = [(a, n, "embeddings") for a in (a1, a2)] + [(b, n_ref, "ref_emb") for b in (p, neg)]
    bounds = [(t, size, of) for t, size, of in bounds if t.numel()]
    if not bounds:
        return
    ranges = torch.stack([r for t, _, _ in bounds for r in t.aminmax()]).tolist()
    for (t, size, of), low, high in zip(bounds, ranges[0::2], ranges[1::2]):
        if low < 0 or high >= size:
            raise ValueError(
                f"indices_tuple: indices must lie in [0, {size}) (the rows of {of}), got values "
                f"in [{low}, {high}]; build it from this batch (a PML miner's output) or pass "
                "ref_emb for indices into another set"
            )


def check_optional_callable(name: str, value: object) -> None:
    """``value`` is ``None`` or callable (else it would fail only when first called)."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__} {value!r}")


def check_path(name: str, value: object) -> str:
    """``value`` (a ``str`` or ``os.PathLike``) as a ``str`` path."""
    try:
        path = os.fspath(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a directory path (str or pathlib.Path), got "
            f"{type(value).__name__} {value!r}"
        ) from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return path
