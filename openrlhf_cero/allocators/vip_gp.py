"""Success-probability predictor of VIP: a Gaussian process in logit space, updated step by step.

Why this shape (docs/vip.md has the full account):

* The paper (arXiv 2602.01601) predicts each prompt's success probability with a GP over
  prompt embeddings, in logit space, from recent rollouts. Its public code keeps a mean
  vector over the whole data set, and at each step fits a GP (RBF kernel, length scale 0.4)
  to the latest batch's residuals against that mean, then adds the posterior correction to
  every prompt's mean: the posterior mean is carried to the next step as its prior mean.
* We do not know the data set up front, so we keep the same posterior mean in factored
  form: per prompt an *anchor* (its posterior mean when it was last observed, or the prior
  logit) plus the corrections ``k(x, x_j) alpha_j`` of every update since, where the
  (feature, alpha) pairs of the last ``window`` training points are kept. A prompt never
  seen is predicted from the corrections alone, i.e. from similar prompts.
* Each update is a textbook GP regression step: prior mean m (the current prediction),
  kernel K, noise Sigma, targets y: alpha = (K + Sigma)^-1 (y - m(X)), posterior mean
  m(x*) + k(x*, X) alpha. Targets are logits of smoothed success rates
  ((s + 1/2) / (n + 1)), with noise variance from the delta method,
  ``noise_scale / (n p (1 - p))`` (ours; the public code interpolates raw rates clipped at
  1e-6, whose logits reach +-13.8 and spill onto neighbours).

Features are L2-normalised, so ``|x - x'|^2 = 2 - 2 x.x'`` and the kernel is one matrix
product and one exp; that product against the window is what bounds the cost
(``O(batch * window * dim)``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve

# Added to the noise variance on the kernel diagonal: the first step of the jitter that
# keeps ``K + Sigma`` factorisable when distinct prompts have (nearly) equal features.
JITTER = 1e-6
NO_ANCHOR = -1  # update index of prompts without an anchor


def logit(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def sigmoid(f: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(f, dtype=np.float64)))


def rbf_from_unit_features(
    x: np.ndarray, y: np.ndarray, length_scale: float, out: np.ndarray | None = None
) -> np.ndarray:
    """RBF kernel exp(-|x-y|^2 / (2 l^2)) for unit-norm rows, in x's dtype (into ``out`` if given).

    For unit rows the exponent is (x.y - 1) / l^2, so the kernel is
    exp(-1/l^2) * exp((x / l^2).y): one matrix product with pre-scaled rows and one exp in
    place (the hot path of prediction). For tiny length scales, where exp(1/l^2) would
    overflow float32, the exponent is formed explicitly instead."""
    inv = 1.0 / (length_scale * length_scale)
    if inv < 60.0:
        gram = np.matmul(x * x.dtype.type(inv), y.T, out=out)
        np.exp(gram, out=gram)
        gram *= gram.dtype.type(np.exp(-inv))
        return gram
    gram = np.matmul(x, y.T, out=out)
    gram -= 1.0
    gram *= inv
    np.minimum(gram, 0.0, out=gram)
    return np.exp(gram, out=gram)


def observation_targets(successes: np.ndarray, trials: np.ndarray, noise_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Logit targets of smoothed success rates and their delta-method noise variances."""
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.asarray(trials, dtype=np.float64)
    rate = (successes + 0.5) / (trials + 1.0)
    noise = noise_scale / (np.maximum(trials, 1.0) * rate * (1.0 - rate))
    return logit(rate), noise


@dataclass
class Prediction:
    """Logit means for one batch, kept until the batch's outcomes update the model."""

    logits: np.ndarray
    has_features: np.ndarray


class SequentialLogitGP:
    """Posterior-mean GP over prompt features, carried from update to update (see module doc)."""

    def __init__(
        self,
        *,
        dim: int,
        length_scale: float,
        prior_logit: float,
        window: int,
        noise_scale: float,
        dtype: type = np.float32,
    ) -> None:
        # float32 for the batch-by-window kernel (the hot path); tests use float64 to
        # compare with the textbook formula exactly.
        self.dtype = np.dtype(dtype)
        self.dim = int(dim)
        self.length_scale = float(length_scale)
        self.prior_logit = float(prior_logit)
        self.window = int(window)
        self.noise_scale = float(noise_scale)
        self.updates = 0  # number of update() calls so far
        self.win_features = np.zeros((0, self.dim), dtype=self.dtype)
        self.win_alpha = np.zeros(0, dtype=np.float64)
        self.win_update = np.zeros(0, dtype=np.int64)
        self.anchors: dict[int, tuple[float, int]] = {}
        self._buffer: np.ndarray | None = None

    # ── prediction ──

    def predict(self, prompt_ids: np.ndarray, features: np.ndarray | None) -> Prediction:
        """Posterior logit means; rows of ``features`` that are NaN mark prompts without features,
        which get their anchor (or the prior logit) alone."""
        size = prompt_ids.size
        base = np.full(size, self.prior_logit)
        since = np.full(size, NO_ANCHOR, dtype=np.int64)
        for i, pid in enumerate(prompt_ids.tolist()):
            anchor = self.anchors.get(pid)
            if anchor is not None:
                base[i], since[i] = anchor
        if features is None:
            return Prediction(base, np.zeros(size, dtype=bool))
        has = ~np.isnan(features[:, 0]) if size else np.zeros(0, dtype=bool)
        logits = base.copy()
        if self.win_alpha.size and has.any():
            logits[has] += self._corrections(features[has], since[has])
        return Prediction(logits, has)

    def _corrections(self, features: np.ndarray, since: np.ndarray) -> np.ndarray:
        """sum_j k(x, x_j) alpha_j over window points from updates after each prompt's anchor.

        The window is ordered by update, so each prompt needs a suffix of it; prompts are
        grouped by that suffix's start (few distinct values: one per update in the window)."""
        shape = (features.shape[0], self.win_features.shape[0])
        if self._buffer is None or self._buffer.shape != shape:  # reused: a fresh 30 MB array costs page faults
            self._buffer = np.empty(shape, dtype=self.dtype)
        kernel = rbf_from_unit_features(
            features.astype(self.dtype, copy=False), self.win_features, self.length_scale, out=self._buffer
        )
        starts = np.searchsorted(self.win_update, since, side="right")
        alpha = self.win_alpha.astype(self.dtype)
        out = np.empty(features.shape[0])
        for start in np.unique(starts):
            rows = np.flatnonzero(starts == start)
            if rows.size == starts.size and start == 0:
                out[:] = kernel @ alpha
            else:
                out[rows] = kernel[rows, start:] @ alpha[start:]
        return out

    # ── update ──

    def update(
        self,
        prompt_ids: np.ndarray,
        features: np.ndarray | None,
        prior: Prediction,
        successes: np.ndarray,
        trials: np.ndarray,
    ) -> None:
        """One GP regression step on a batch's outcomes, with ``prior`` (this batch's prediction
        from ``predict``, made before any other update) as the prior mean.

        A prompt that appears several times in the batch (OpenRLHF data sets often repeat
        prompts) is one observation of one latent logit: its successes and trials are pooled
        first, which is exact for binomial counts. Two rows with the same input would otherwise
        make ``K + Sigma`` singular when the noise is small (``noise_scale`` 0 interpolates)."""
        rows, successes, trials = _pool_repeated_prompts(prompt_ids, successes, trials)
        targets, noise = observation_targets(successes, trials, self.noise_scale)
        self.updates += 1
        step = self.updates
        usable = prior.has_features[rows] if features is not None else np.zeros(rows.size, dtype=bool)
        posterior = prior.logits[rows].copy()
        if usable.any():
            x = features[rows[usable]].astype(self.dtype)
            residual = targets[usable] - posterior[usable]
            diagonal = noise[usable] + JITTER
            # Single precision halves the Cholesky's cost and is accurate to ~1e-4 in alpha while
            # the noise keeps K + Sigma well conditioned (eigenvalues >= min noise, <= batch size);
            # near-interpolation (tiny noise) and the float64 mode factor in double precision.
            solve_dtype = np.float32 if self.dtype == np.float32 and diagonal.min() >= 1e-2 else np.float64
            kernel = rbf_from_unit_features(x, x, self.length_scale)
            factor = _cholesky_with_jitter(kernel.astype(solve_dtype), diagonal.astype(solve_dtype))
            alpha = cho_solve(factor, residual.astype(solve_dtype), check_finite=False).astype(np.float64)
            posterior[usable] += kernel @ alpha.astype(kernel.dtype)
            self._append_window(x, alpha, step)
        # Prompts without features: a scalar Kalman step of their own anchor (unit prior variance).
        lone = ~usable
        if lone.any():
            gain = 1.0 / (1.0 + noise[lone])
            posterior[lone] += gain * (targets[lone] - posterior[lone])
        for pid, value in zip(prompt_ids[rows].tolist(), posterior.tolist()):
            self.anchors[pid] = (value, step)

    def _append_window(self, features: np.ndarray, alpha: np.ndarray, step: int) -> None:
        self.win_features = np.concatenate([self.win_features, features])[-self.window :]
        self.win_alpha = np.concatenate([self.win_alpha, alpha])[-self.window :]
        self.win_update = np.concatenate([self.win_update, np.full(alpha.size, step, dtype=np.int64)])[-self.window :]
        # Points dropped here take their corrections with them: prompts not observed since
        # fall back towards their anchor (or the prior). Anchors themselves are never dropped
        # (one entry per prompt ever seen: its carried mean).

    # ── state ──

    def state(self) -> dict:
        ids = list(self.anchors)
        return {
            "updates": self.updates,
            "dim": self.dim,
            "window_features": _encode(self.win_features),
            "window_alpha": self.win_alpha.tolist(),
            "window_update": self.win_update.tolist(),
            "anchor_ids": [str(i) for i in ids],
            "anchor_logits": [self.anchors[i][0] for i in ids],
            "anchor_updates": [self.anchors[i][1] for i in ids],
        }

    def load_state(self, state: dict) -> None:
        if int(state["dim"]) != self.dim:
            raise ValueError(f"saved features have dimension {state['dim']}, this featuriser gives {self.dim}")
        self.updates = int(state["updates"])
        self.win_alpha = np.asarray(state["window_alpha"], dtype=np.float64)
        self.win_update = np.asarray(state["window_update"], dtype=np.int64)
        self.win_features = _decode(state["window_features"], self.dim, self.dtype)
        self.anchors = {
            int(i): (float(v), int(u))
            for i, v, u in zip(state["anchor_ids"], state["anchor_logits"], state["anchor_updates"])
        }


def _pool_repeated_prompts(
    prompt_ids: np.ndarray, successes: np.ndarray, trials: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed prompts once each, in order of first appearance: (row of the first
    occurrence, pooled successes, pooled trials)."""
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.asarray(trials, dtype=np.float64)
    observed = np.flatnonzero(trials > 0)
    _, first, inverse = np.unique(prompt_ids[observed], return_index=True, return_inverse=True)
    if first.size == observed.size:
        return observed, successes[observed], trials[observed]
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group = rank[inverse.reshape(-1)]
    pooled_successes = np.bincount(group, weights=successes[observed], minlength=order.size)
    pooled_trials = np.bincount(group, weights=trials[observed], minlength=order.size)
    return observed[first[order]], pooled_successes, pooled_trials


def _cholesky_with_jitter(kernel: np.ndarray, diagonal: np.ndarray) -> tuple[np.ndarray, bool]:
    """Cholesky factor of ``kernel + diag(diagonal)``, adding jitter that grows tenfold
    until the factorisation succeeds.

    Pooling repeated prompt ids removes exact duplicates, but two *different* prompts can
    still have (nearly) the same features (e.g. texts that differ only in what the
    featuriser ignores); with little noise the matrix is then singular up to rounding, and
    whether the factorisation passes depends on the BLAS kernel (it failed under
    ``OPENBLAS_CORETYPE=Haswell``). A jitter of 1e-6 relative to the kernel's unit diagonal
    changes the posterior mean far below the noise of a handful of rollouts; it is the
    standard remedy (Rasmussen & Williams, Gaussian Processes for ML, 2006, sec. A.4)."""
    jitter = 0.0
    for _ in range(8):
        gram = kernel.copy()
        gram[np.diag_indices_from(gram)] += diagonal + gram.dtype.type(jitter)
        try:
            return cho_factor(gram, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            jitter = max(jitter * 10.0, JITTER)
    gram = kernel.astype(np.float64)  # last resort: double precision with a large jitter
    gram[np.diag_indices_from(gram)] += diagonal + 1e-1
    return cho_factor(gram, lower=True, overwrite_a=True, check_finite=False)


def _encode(array: np.ndarray) -> str:
    """Exact, compact JSON form of the window features (little-endian bytes, base64)."""
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return base64.b64encode(np.ascontiguousarray(little).tobytes()).decode("ascii")


def _decode(text: str, dim: int, dtype: np.dtype) -> np.ndarray:
    flat = np.frombuffer(base64.b64decode(text.encode("ascii")), dtype=dtype.newbyteorder("<"))
    return flat.astype(dtype).reshape(-1, dim)
