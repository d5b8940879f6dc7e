"""Curve fits of a statistic across training checkpoints (METHODS.md section 3, training dynamics).

The five-parameter model ``f(t) = A exp(-lambda x) log(x) + K`` with ``x = gamma t + t0`` is fitted with
``scipy.optimize.curve_fit`` (method ``trf``, ``lambda >= 0``, ``gamma, t0 > 0``) on normalised data: steps divided by
the last step, values mapped to [0, 1]; the initial values are METHODS.md's (A = max - min, K = min + A/2,
lambda = 1/std(t), gamma = 1/range(t), t0 = 1, all on the normalised data). Parameters are reported in the original
units. The peak of ``exp(-lambda x) log x`` lies where ``lambda x log x = 1``, i.e. ``x = exp(W(1/lambda))`` (Lambert W),
so ``t_peak = (exp(W(1/lambda)) - t0) / gamma``. A logistic step in log-time
``g(t) = K + A / (1 + exp(-(log(1 + t) - m) / s))`` (four parameters) is the simpler alternative, compared by AIC
``n log(RSS / n) + 2 k``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import lambertw

MIN_POINTS = 5
PARAMS = ("A", "lambda", "gamma", "t0", "K")


class TooFewCheckpointsError(ValueError):
    """A curve with fewer checkpoints than a five-parameter fit needs."""


def dynamics_curve(t: np.ndarray, A: float, lam: float, gamma: float, t0: float, K: float) -> np.ndarray:
    """``A exp(-lam x) log(x) + K`` with ``x = gamma t + t0``; ``t`` [n] -> [n]."""
    x = gamma * np.asarray(t, dtype=float) + t0
    return A * np.exp(-lam * x) * np.log(x) + K


def dynamics_jacobian(t: np.ndarray, A: float, lam: float, gamma: float, t0: float, K: float) -> np.ndarray:
    """Partial derivatives of :func:`dynamics_curve` in (A, lam, gamma, t0, K): [n, 5]."""
    t = np.asarray(t, dtype=float)
    x = gamma * t + t0
    e, log_x = np.exp(-lam * x), np.log(x)
    dx = A * e * (1.0 / x - lam * log_x)
    return np.stack([e * log_x, -A * x * e * log_x, dx * t, dx, np.ones_like(t)], axis=1)


def step_curve(t: np.ndarray, A: float, m: float, s: float, K: float) -> np.ndarray:
    """A logistic step in log-time: ``K + A / (1 + exp(-(log(1 + t) - m) / s))``; ``t`` [n] -> [n]."""
    z = np.clip(-(np.log1p(np.asarray(t, dtype=float)) - m) / s, -60, 60)
    return K + A / (1 + np.exp(z))


@dataclass
class CurveFit:
    """One fitted curve: the five parameters (original units), R^2, the peak step, AIC of both models."""

    A: float
    lam: float
    gamma: float
    t0: float
    K: float
    r2: float
    t_peak: float
    aic: float
    aic_step: float
    r2_step: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def predict(self, t: np.ndarray) -> np.ndarray:
        """The fitted curve at steps ``t`` [n] -> [n]."""
        return dynamics_curve(t, self.A, self.lam, self.gamma, self.t0, self.K)


def peak_step(lam: float, gamma: float, t0: float) -> float:
    """Step of the extremum of ``exp(-lam x) log x`` (``inf`` when ``lam == 0``: the curve keeps rising)."""
    if lam <= 0:
        return math.inf
    x_peak = math.exp(float(np.real(lambertw(1.0 / lam))))
    return (x_peak - t0) / gamma


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - pred) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


def _aic(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    rss = max(float(((y - pred) ** 2).sum()), 1e-300)
    return len(y) * math.log(rss / len(y)) + 2 * k


def _best_fit(fn, t: np.ndarray, y: np.ndarray, starts: list[list[float]], bounds, jac="2-point") -> np.ndarray | None:
    best, best_rss = None, math.inf
    for p0 in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                popt, _ = curve_fit(fn, t, y, p0=p0, bounds=bounds, method="trf", max_nfev=400, jac=jac)
        except (RuntimeError, ValueError):
            continue
        rss = float(((fn(t, *popt) - y) ** 2).sum())
        if np.isfinite(rss) and rss < best_rss:
            best, best_rss = popt, rss
    return best


def fit_dynamics(steps: np.ndarray, values: np.ndarray) -> CurveFit:
    """Fit the five-parameter model (and the logistic step) to ``values`` [n] at checkpoint ``steps`` [n].

    Raises TooFewCheckpointsError with fewer than five checkpoints, ValueError on non-finite values.
    """
    t = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError(f"steps and values must be 1-D of equal length, got {t.shape} and {y.shape}")
    if len(t) < MIN_POINTS:
        raise TooFewCheckpointsError(
            f"a five-parameter fit needs at least {MIN_POINTS} checkpoints, got {len(t)} (steps {t.astype(int).tolist()})"
        )
    if not (np.isfinite(t).all() and np.isfinite(y).all()):
        raise ValueError("steps and values must be finite")
    t_scale = t.max() if t.max() > 0 else 1.0
    y_min, y_range = y.min(), (y.max() - y.min()) or 1.0
    tn, yn = t / t_scale, (y - y_min) / y_range

    a0, k0 = yn.max() - yn.min(), yn.min() + (yn.max() - yn.min()) / 2
    lam0 = 1.0 / (tn.std() or 1.0)
    g0 = 1.0 / ((tn.max() - tn.min()) or 1.0)
    starts = [[a0, lam0, g0, 1.0, k0]]
    starts += [[s * a0, lam0 * f, g0, 1.0, k0] for s in (1, -1) for f in (0.1, 1, 10) if (s, f) != (1, 1)]
    starts += [[a0, lam0, 30 * g0, 1.0, k0]]
    # Wide bounds on the normalised scale keep the optimiser from running off to degenerate curves.
    bounds = ([-1e3, 0.0, 1e-6, 1e-6, -10.0], [1e3, 50.0, 1e4, 1e3, 10.0])
    popt = _best_fit(dynamics_curve, tn, yn, starts, bounds, jac=dynamics_jacobian)
    if popt is None:
        raise RuntimeError("the five-parameter fit did not converge from any starting point")
    A = popt[0] * y_range
    K = popt[4] * y_range + y_min
    lam, gamma, t0 = float(popt[1]), float(popt[2] / t_scale), float(popt[3])
    pred = dynamics_curve(t, A, lam, gamma, t0, K)

    lt = np.log1p(t)
    step_starts = [[1.0, float(np.median(lt)), s, 0.0] for s in (0.3, 1.0)] + [[-1.0, float(np.median(lt)), 1.0, 1.0]]
    sp = _best_fit(step_curve, t, yn, step_starts, ([-np.inf, -np.inf, 1e-3, -np.inf], [np.inf, np.inf, np.inf, np.inf]))
    step_pred = step_curve(t, *sp) * y_range + y_min if sp is not None else np.full_like(y, y.mean())
    return CurveFit(
        A=float(A), lam=lam, gamma=gamma, t0=t0, K=float(K), r2=_r2(y, pred), t_peak=float(peak_step(lam, gamma, t0)),
        aic=_aic(y, pred, 5), aic_step=_aic(y, step_pred, 4), r2_step=_r2(y, step_pred), n=len(t),
    )
