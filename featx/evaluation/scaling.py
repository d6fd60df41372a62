"""Probability scaling learnt on a few labelled images of a site: Platt (two classes: a logistic regression on
the model's log-odds) or temperature (one divisor of the log-probabilities, any number of classes).

Both are monotone in the probability they rescale, so a model's ROC-AUC and the ranking of its images are
unchanged: they make the probability mean what it says at that site. `Scaling` is the value a model's sidecar
keeps; `fit_scaling` learns one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._core.errors import FeatxError

SCALINGS = ("none", "platt", "temperature")
_EPS = 1e-7


@dataclass(frozen=True)
class Scaling:
    method: str  # "platt" or "temperature"
    slope: float = 1.0  # platt: a in sigmoid(a * logit(p) + b); temperature: 1 / T
    intercept: float = 0.0

    def apply(self, proba) -> np.ndarray:
        """The rescaled probabilities (columns as given)."""
        proba = np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1 - _EPS)
        if self.method == "platt":
            logit = np.log(proba[:, 1]) - np.log(proba[:, 0])
            p1 = 1 / (1 + np.exp(-(self.slope * logit + self.intercept)))
            return np.column_stack([1 - p1, p1])
        scaled = self.slope * np.log(proba)
        scaled = np.exp(scaled - scaled.max(1, keepdims=True))
        return scaled / scaled.sum(1, keepdims=True)

    def describe(self) -> str:
        if self.method == "platt":
            return f"Platt scaling (sigmoid({self.slope:.3f} x log-odds {self.intercept:+.3f}))"
        return f"temperature scaling (T = {1 / self.slope:.3f})"

    def to_json(self) -> dict:
        return {"method": self.method, "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_json(cls, record: dict | None) -> Scaling | None:
        return None if not record else cls(record["method"], float(record["slope"]), float(record["intercept"]))


def check_scaling(method: str, n_classes: int) -> str:
    if method not in SCALINGS:
        raise FeatxError(f"--scaling must be one of {', '.join(SCALINGS)}, not {method!r}")
    if method == "platt" and n_classes != 2:
        raise FeatxError("--scaling platt applies to two classes; use temperature")
    return method


def fit_scaling(method: str, y, proba) -> Scaling | None:
    """The scaling `method` learnt on labels `y` and the model's probabilities (None for "none")."""
    if method == "none":
        return None
    from scipy.optimize import minimize

    y = np.asarray(y)
    log_p = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1 - _EPS))
    if method == "platt":
        logit = log_p[:, 1] - log_p[:, 0]

        def loss(w):
            z = w[0] * logit + w[1]
            return float(np.mean(np.logaddexp(0, z) - y * z))
        a, b = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B").x
        return Scaling("platt", float(a), float(b))

    def nll(w):
        z = w[0] * log_p
        return float(np.mean(np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(len(y)), y]))
    (inverse_t,) = minimize(nll, np.array([1.0]), method="L-BFGS-B", bounds=[(1e-3, 1e3)]).x
    return Scaling("temperature", float(inverse_t))
