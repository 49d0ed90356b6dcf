"""Argument checks shared by the public entry points.

Shapes are checked, never guessed (style habit 1): images ``(B, C, H, W)``, filters
``(K, C, s, s)``, maps ``(B, K, H+s-1, W+s-1)`` ('valid') or ``(B, K, H, W)`` ('circular').
Every failure is a ``ValueError`` (or ``TypeError``) whose message names the argument, the
value received and what is allowed.
"""

from __future__ import annotations

import math

import torch

from .config import BOUNDARIES


def check_boundary(boundary: str) -> str:
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary={boundary!r} is not supported; use one of {BOUNDARIES}")
    return boundary


def check_tensor(name: str, t, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t


def check_filters(f: torch.Tensor) -> tuple[int, int, int]:
    check_tensor("f", f, 4, "(K, C, s, s)")
    K, C, s, s2 = f.shape
    if s != s2 or s < 1:
        raise ValueError(f"filters must be square (K, C, s, s), got {tuple(f.shape)}")
    if K < 1 or C < 1:
        raise ValueError(f"filters need K >= 1 and C >= 1, got {tuple(f.shape)}")
    return K, C, s


def check_same(name: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype or t.device != ref.device:
        raise ValueError(
            f"{name} is {t.dtype} on {t.device} but the filters are {ref.dtype} on {ref.device}; "
            "convert them to the same dtype and device"
        )


def map_size(H: int, W: int, s: int, boundary: str) -> tuple[int, int]:
    """Spatial size of the feature maps for an ``H x W`` input (Zeiler et al. 2010, Sec. 2)."""
    return (H + s - 1, W + s - 1) if boundary == "valid" else (H, W)


def image_size(Hz: int, Wz: int, s: int, boundary: str) -> tuple[int, int]:
    """Inverse of :func:`map_size`."""
    return (Hz - s + 1, Wz - s + 1) if boundary == "valid" else (Hz, Wz)


def check_positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_p(p: float) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not (0 < p <= 1):
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    return float(p)


def check_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
