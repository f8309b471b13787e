"""Non-negative least squares, min ||A x - b|| subject to x >= 0 (Lawson-Hanson active set).

Step-time coefficients are costs, so a negative one is a fitting artefact; scipy would do this, but
the engine does not depend on it and twenty lines of numpy suffice for a handful of columns."""

from __future__ import annotations

import numpy as np


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m, n = a.shape
    # Unit-norm columns: the tolerances below then mean the same thing for every coefficient.
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    a = a / norms
    tol = 10 * np.finfo(float).eps * max(m, n) * max(1.0, float(np.abs(b).max(initial=0.0)))
    max_iter = max_iter or 3 * n
    active = np.zeros(n, dtype=bool)  # the "passive" set P: coefficients free to be positive
    x = np.zeros(n)
    gradient = a.T @ (b - a @ x)
    for _ in range(max_iter):
        candidates = np.where(active, -np.inf, gradient)
        if active.all() or candidates.max() <= tol:
            break
        active[int(candidates.argmax())] = True
        while True:
            trial = np.zeros(n)
            if not active.any():
                break
            trial[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
            if trial[active].min() > 0:
                break
            # Walk from x towards the trial point until the first coefficient hits zero, drop it.
            blocking = active & (trial <= 0)
            step = np.min(x[blocking] / (x[blocking] - trial[blocking]))
            x = x + step * (trial - x)
            active &= x > tol
            x[~active] = 0.0
        x = trial
        gradient = a.T @ (b - a @ x)
    return x / norms
