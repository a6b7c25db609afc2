"""Small numerical helpers every layer shares: TF32 switched off or on, the cosine of two tensors, RMS,
and the log-log line whose slope reads an order (of a remainder in lr, of a law across tensors)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 on or off for CUDA matmuls and cuDNN convolutions, restored on exit (on, it silently drops
    float32 to a 10-bit mantissa: brackets run with it off)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩ / (‖a‖‖b‖) over all entries, in float64."""
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def rms(a: torch.Tensor) -> float:
    """Root mean square over all entries, in float64."""
    return float(a.double().pow(2).mean().sqrt())


@dataclass(frozen=True)
class LogLogFit:
    """log10(y) = slope · log10(x) + intercept, fitted by least squares; r is the correlation of the logs."""
    slope: float
    intercept: float
    r: float
    residual_sd: float  # standard deviation of the log10 residuals: the scatter is a factor of 10**residual_sd
    n_points: int
    n_dropped: int   # points with a zero (or non-finite) x or y: no logarithm


def loglog_fit(x, y) -> LogLogFit:
    """Least-squares line through (log10 x, log10 y), skipping points that have no logarithm."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    lx, ly = np.log10(x[keep]), np.log10(y[keep])
    if keep.sum() < 3:
        raise ValueError(f"A log-log fit needs at least 3 positive points, got {int(keep.sum())}.")
    slope, intercept = np.polyfit(lx, ly, 1)
    r = np.corrcoef(lx, ly)[0, 1]
    residual_sd = np.std(ly - (slope * lx + intercept))
    return LogLogFit(float(slope), float(intercept), float(r), float(residual_sd), int(keep.sum()), int((~keep).sum()))
