"""A scaling law fitted to measured losses: L(N, D, U) = E + A / N^alpha + B / D'^beta.

N is the non-embedding parameter count (the hidden matrices: Kaplan et al. 2020 found the law
cleaner without the embeddings, which dominate a small model's count), D the tokens trained, U the
unique tokens, and D' the effective data of Muennighoff et al. 2023 ("Scaling Data-Constrained
Language Models", eq. 5): repeated epochs are worth less than new tokens, decaying with
R*_D = 15.4, their fitted constant (the pilots run one epoch or less, so this term is theirs, not
measured here). The form is Chinchilla's (Hoffmann et al. 2022, approach 3).

The fit is numpy-only: a grid over the exponents, and for each the non-negative least squares of
E, A, B (3 coefficients: every subset of them solved, the best feasible kept, which is exact).
Its uncertainty is a residual bootstrap: the fitted losses plus resampled residuals, refitted.
The pseudo-inverses depend on the grid and the points only, so each resample costs products.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

REPETITION_DECAY = 15.4          # R*_D of Muennighoff et al. 2023
ALPHAS = np.linspace(0.05, 1.2, 47)
BETAS = np.linspace(0.05, 1.2, 47)
BOOTSTRAP = 300
INTERVAL = (5.0, 95.0)           # percentiles: a 90% interval
SEED = 0                         # the bootstrap's: the same points give the same interval
_SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(range(3), r)]


def effective_tokens(tokens: np.ndarray | float, unique: np.ndarray | float) -> np.ndarray:
    """D' = U + U R* (1 - exp(-R / R*)), R = D / U - 1 repeated epochs; D itself within one epoch."""
    tokens, unique = np.asarray(tokens, dtype=float), np.asarray(unique, dtype=float)
    repeats = np.maximum(tokens / unique - 1.0, 0.0)
    repeated = unique + unique * REPETITION_DECAY * (1.0 - np.exp(-repeats / REPETITION_DECAY))
    return np.where(repeats > 0, repeated, tokens)


@dataclass(frozen=True)
class Law:
    e: float
    a: float
    alpha: float
    b: float
    beta: float
    n0: float                    # the scales N and D' are divided by (conditioning)
    d0: float
    rmse: float                  # of the fit on its points, nats
    boot: np.ndarray             # (BOOTSTRAP, 5) resampled (e, a, alpha, b, beta)

    def loss(self, n: float, tokens: float, unique: float) -> float:
        return float(_predict(np.array([self.e, self.a, self.alpha, self.b, self.beta]), n / self.n0,
                              effective_tokens(tokens, unique) / self.d0))

    def interval(self, n: float, tokens: float, unique: float) -> tuple[float, float]:
        d = effective_tokens(tokens, unique) / self.d0
        values = [_predict(row, n / self.n0, d) for row in self.boot]
        low, high = np.percentile(values, INTERVAL)
        return float(min(low, self.loss(n, tokens, unique))), float(max(high, self.loss(n, tokens, unique)))

    def as_dict(self) -> dict:
        return {"form": "L = E + A / (N/n0)^alpha + B / (D'/d0)^beta", "E": self.e, "A": self.a, "alpha": self.alpha,
                "B": self.b, "beta": self.beta, "n0": self.n0, "d0": self.d0, "rmse": self.rmse,
                "repetition_decay": REPETITION_DECAY, "bootstrap": len(self.boot),
                "interval_percentiles": list(INTERVAL)}


def _predict(coef: np.ndarray, n: float, d: float) -> float:
    e, a, alpha, b, beta = coef
    return float(e + a * n ** -alpha + b * d ** -beta)


def fit(n: list[float], tokens: list[float], unique: list[float], loss: list[float],
        weights: list[float] | None = None) -> Law:
    """The law through the points (at least 5: as many as it has parameters), each squared error
    counted `weights` times (default once)."""
    n_arr, d_arr = np.asarray(n, dtype=float), effective_tokens(tokens, unique)
    n0, d0 = float(np.exp(np.log(n_arr).mean())), float(np.exp(np.log(d_arr).mean()))
    y = np.asarray(loss, dtype=float)
    solver = _Solver(n_arr / n0, d_arr / d0, np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float))
    best = solver.solve(y)
    fitted = solver.predict(best)
    residuals = (y - fitted) * np.sqrt(len(y) / max(1, len(y) - 5))   # inflated for the 5 fitted parameters
    rng = np.random.default_rng(SEED)
    boot = np.array([solver.solve(fitted + rng.choice(residuals, size=len(y))) for _ in range(BOOTSTRAP)])
    rmse = float(np.sqrt(np.mean((y - fitted) ** 2)))
    return Law(*map(float, best), n0=n0, d0=d0, rmse=rmse, boot=boot)


class _Solver:
    """Every (alpha, beta) of the grid and every subset of (E, A, B), solved for any losses y."""

    def __init__(self, n: np.ndarray, d: np.ndarray, weights: np.ndarray):
        self.n, self.d, self.root_w = n, d, np.sqrt(weights)
        alpha, beta = np.meshgrid(ALPHAS, BETAS, indexing="ij")
        self.alpha, self.beta = alpha.ravel(), beta.ravel()
        # columns [1, N^-alpha, D'^-beta] per grid point: (G, points, 3)
        self.columns = np.stack([np.ones((len(self.alpha), len(n))), n[None, :] ** -self.alpha[:, None],
                                 d[None, :] ** -self.beta[:, None]], axis=2)
        self.columns = self.columns * self.root_w[None, :, None]   # weighted least squares
        self.pinv = [np.linalg.pinv(self.columns[:, :, list(s)]) for s in _SUBSETS]

    def solve(self, y: np.ndarray) -> np.ndarray:
        """(E, A, alpha, B, beta) of least squared error with E, A, B >= 0."""
        best_sse, best = np.inf, None
        y = y * self.root_w
        for subset, pinv in zip(_SUBSETS, self.pinv):
            coef = pinv @ y                                    # (G, |subset|)
            feasible = (coef >= 0).all(axis=1)
            if not feasible.any():
                continue
            full = np.zeros((len(coef), 3))
            full[:, list(subset)] = coef
            sse = np.where(feasible, (((self.columns @ full[:, :, None])[..., 0] - y) ** 2).sum(axis=1), np.inf)
            g = int(np.argmin(sse))
            if sse[g] < best_sse:
                best_sse = sse[g]
                best = np.array([full[g, 0], full[g, 1], self.alpha[g], full[g, 2], self.beta[g]])
        return best

    def predict(self, coef: np.ndarray) -> np.ndarray:
        e, a, alpha, b, beta = coef
        return e + a * self.n ** -alpha + b * self.d ** -beta
