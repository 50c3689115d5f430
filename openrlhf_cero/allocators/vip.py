"""``vip``: Variance-Informed Predictive allocation (Nguyen et al., ICLR 2026, arXiv 2602.01601).

Each step: predict every batch prompt's success probability p_q with a Gaussian process in
logit space over prompt features (:mod:`vip_gp`), turn it into the gradient-variance weight
a_q = p_q (1 - p_q), and split the budget to minimise sum_q a_q h(n_q)
(:mod:`variance_allocation`). After the rollouts, the observed success rates update the GP.
docs/vip.md says what comes from the paper, what from its public code, and what is ours.

Optional hook (outside the common contract, which passes only prompt ids)::

    alloc.observe_prompts(prompt_ids, texts=None, *, features=None) -> None

Callers that know the prompts call it before ``plan`` with the texts (the OpenRLHF
generator) or with ready feature vectors, shape (len(prompt_ids), feature_dim) (the
simulator). Features are cached per prompt id, so calling it again for known prompts costs
nothing. Fallback: a prompt with no features is predicted from its own carried posterior
mean if it was observed before, else from the prior logit (``--allocator.vip.prior_logit``);
if no prompt ever has features, VIP still tracks each prompt's own success rate by id.
Callers detect the hook with ``hasattr(allocator, "observe_prompts")``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from openrlhf_cero.allocators.base import AllocatorError, OptionSpec, RolloutAllocator, as_prompt_ids
from openrlhf_cero.allocators.registry import register_allocator
from openrlhf_cero.allocators.text_features import (
    Featurizer,
    NgramHashFeaturizer,
    SentenceTransformerFeaturizer,
    normalise_rows,
)
from openrlhf_cero.allocators.variance_allocation import (
    ESTIMATOR_MODELS,
    VarianceModel,
    integer_allocation,
)
from openrlhf_cero.allocators.vip_gp import Prediction, SequentialLogitGP, sigmoid

FEATURIZERS = ("auto", "ngram_hash", "sentence_transformers")
VARIANCE_CHOICES = ("auto", "rloo", "grpo")
# Predicted probabilities are kept inside this margin so that a_q > 0 (public code: 1e-6).
P_MARGIN = 1e-6


@register_allocator
class VipAllocator(RolloutAllocator):
    name = "vip"
    options = (
        OptionSpec("length_scale", float, 0.4, "RBF kernel length scale on unit-norm prompt features (paper code: 0.4)"),
        OptionSpec("prior_logit", float, -1.0, "GP prior mean in logit space: prediction for prompts with nothing similar seen"),
        OptionSpec("history_window", int, 8192, "GP training points (past prompt observations) kept for prediction"),
        OptionSpec("noise_scale", float, 1.0, "multiplier of the delta-method noise variance of observed logit rates"),
        OptionSpec("featurizer", str, "auto", "prompt features: ngram_hash (built in, no network) or "
                   "sentence_transformers (needs --allocator.vip.embedding_model); auto picks by embedding_model",
                   FEATURIZERS),
        OptionSpec("embedding_model", str, "", "path of a local sentence-transformers model directory (optional)"),
        OptionSpec("feature_dim", int, 128, "dimension of the ngram_hash features, or of feature vectors given directly"),
        OptionSpec("variance_model", str, "auto", "h(n) of the gradient variance: rloo = 1/(n-1), grpo = (n-1)/n^2; "
                   "auto follows --algo.advantage.estimator", VARIANCE_CHOICES),
    )

    def __init__(
        self,
        *,
        length_scale: float = 0.4,
        prior_logit: float = -1.0,
        history_window: int = 8192,
        noise_scale: float = 1.0,
        featurizer: str = "auto",
        embedding_model: str = "",
        feature_dim: int = 128,
        variance_model: str = "auto",
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        if not length_scale > 0:
            raise AllocatorError(f"--allocator.vip.length_scale must be > 0, got {length_scale}")
        if not np.isfinite(prior_logit):
            raise AllocatorError(f"--allocator.vip.prior_logit must be finite, got {prior_logit}")
        if int(history_window) < 1:
            raise AllocatorError(f"--allocator.vip.history_window must be >= 1, got {history_window}")
        if not noise_scale >= 0:
            raise AllocatorError(f"--allocator.vip.noise_scale must be >= 0, got {noise_scale}")
        self.length_scale = float(length_scale)
        self.prior_logit = float(prior_logit)
        self.history_window = int(history_window)
        self.noise_scale = float(noise_scale)
        self.embedding_model = str(embedding_model or "")
        self.featurizer_name = _pick_featurizer(featurizer, self.embedding_model)
        self.variance_kind = _pick_variance_model(variance_model, self.advantage_estimator)
        if self.min_samples < 2:
            raise AllocatorError(
                f"--rollout_allocator vip needs --allocator.min_samples >= 2 (its variance model "
                f"{self.variance_kind} has no value for groups of 1), got {self.min_samples}"
            )
        self.variance = VarianceModel(self.variance_kind, self.min_samples)
        self._featurizer: Featurizer | None = None
        if self.featurizer_name == "sentence_transformers":
            self._featurizer = SentenceTransformerFeaturizer(self.embedding_model)
            self.feature_dim = self._featurizer.dim
        else:
            self._featurizer = NgramHashFeaturizer(int(feature_dim))
            self.feature_dim = self._featurizer.dim
        self.gp = SequentialLogitGP(
            dim=self.feature_dim,
            length_scale=self.length_scale,
            prior_logit=self.prior_logit,
            window=self.history_window,
            noise_scale=self.noise_scale,
        )
        self._features: dict[int, np.ndarray] = {}
        self._open: tuple[np.ndarray, np.ndarray, Prediction] | None = None
        self._figures = _VipFigures()

    # ── the optional hook ──

    def observe_prompts(
        self,
        prompt_ids: Sequence[int] | np.ndarray,
        texts: Sequence[str] | None = None,
        *,
        features: np.ndarray | None = None,
    ) -> None:
        """Give VIP the prompts' texts (or feature vectors) before ``plan``; see the module doc."""
        ids = as_prompt_ids(prompt_ids)
        if (texts is None) == (features is None):
            raise AllocatorError("vip.observe_prompts takes either texts or features, exactly one of them")
        if features is not None:
            features = np.asarray(features)
            if features.shape != (ids.size, self.feature_dim):
                raise AllocatorError(
                    f"vip.observe_prompts got features of shape {features.shape} for {ids.size} prompts; expected "
                    f"({ids.size}, {self.feature_dim}) (set --allocator.vip.feature_dim to the vectors' length)"
                )
            for pid, row in zip(ids.tolist(), normalise_rows(features)):
                self._features[pid] = row
            return
        if len(texts) != ids.size:
            raise AllocatorError(f"vip.observe_prompts got {len(texts)} texts for {ids.size} prompt ids")
        new = [i for i, pid in enumerate(ids.tolist()) if pid not in self._features]
        if new:
            rows = self._featurizer([texts[i] for i in new])
            for i, row in zip(new, rows):
                self._features[int(ids[i])] = row

    # ── the contract ──

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        self.check_budget(prompt_ids.size, budget)
        features = self._feature_matrix(prompt_ids)
        prediction = self.gp.predict(prompt_ids, features)
        p = np.clip(sigmoid(prediction.logits), P_MARGIN, 1.0 - P_MARGIN)
        self._open = (prompt_ids.copy(), features, prediction)
        counts = integer_allocation(self.variance, p * (1.0 - p), budget, self.min_samples, self.max_samples)
        self._figures.planned(p, counts, prediction.has_features, self.min_samples, self.max_samples)
        return counts

    def _finish(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        if self._open is None or not np.array_equal(self._open[0], prompt_ids):
            raise AllocatorError("vip.finish got other prompts than the open plan; call plan first, with the same prompts")
        _, features, prediction = self._open
        self._open = None
        trials = np.fromiter((s.size for s in scores), dtype=np.int64, count=len(scores))
        successes = np.fromiter((s.sum() for s in scores), dtype=np.float64, count=len(scores))
        self.gp.update(prompt_ids, features, prediction, successes, trials)
        observed = trials > 0
        if observed.any():
            rate = successes[observed] / trials[observed]
            predicted = sigmoid(prediction.logits[observed])
            self._figures.observed(predicted, rate, float(sigmoid(self.prior_logit)))
        return observed

    # ── state and metrics ──

    def _state(self) -> dict[str, Any]:
        return {"gp": self.gp.state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        try:
            self.gp.load_state(state["gp"])
        except ValueError as exc:
            raise AllocatorError(
                f"vip checkpoint does not fit this run: {exc}; use the same --allocator.vip.featurizer, "
                "--allocator.vip.embedding_model and --allocator.vip.feature_dim as the run that saved it"
            ) from None
        self._open = None
        self._figures = _VipFigures()

    def _settings(self) -> dict[str, Any]:
        settings = super()._settings()
        settings.update(
            length_scale=self.length_scale,
            prior_logit=self.prior_logit,
            history_window=self.history_window,
            noise_scale=self.noise_scale,
            featurizer=self.featurizer_name,
            embedding_model=self.embedding_model,
            feature_dim=self.feature_dim,
            variance_model=self.variance_kind,
        )
        return settings

    def _extra_metrics(self) -> dict[str, float]:
        figures = self._figures.summary()
        figures["vip_gp_window_points"] = float(self.gp.win_alpha.size)
        figures["vip_gp_prompts_tracked"] = float(len(self.gp.anchors))
        self._figures = _VipFigures()
        return figures

    # ── internals ──

    def _feature_matrix(self, prompt_ids: np.ndarray) -> np.ndarray:
        rows = np.full((prompt_ids.size, self.feature_dim), np.nan, dtype=np.float32)
        for i, pid in enumerate(prompt_ids.tolist()):
            row = self._features.get(pid)
            if row is not None:
                rows[i] = row
        return rows


def _pick_featurizer(featurizer: str, embedding_model: str) -> str:
    if featurizer not in FEATURIZERS:
        raise AllocatorError(f"--allocator.vip.featurizer {featurizer!r} is not one of {', '.join(FEATURIZERS)}")
    if featurizer == "auto":
        return "sentence_transformers" if embedding_model else "ngram_hash"
    if featurizer == "sentence_transformers" and not embedding_model:
        raise AllocatorError(
            "--allocator.vip.featurizer sentence_transformers needs --allocator.vip.embedding_model PATH "
            "(a local model directory)"
        )
    if featurizer == "ngram_hash" and embedding_model:
        raise AllocatorError(
            "--allocator.vip.embedding_model is set but --allocator.vip.featurizer is ngram_hash; "
            "drop one of them (or use --allocator.vip.featurizer auto)"
        )
    return featurizer


def _pick_variance_model(choice: str, estimator: str) -> str:
    if choice not in VARIANCE_CHOICES:
        raise AllocatorError(f"--allocator.vip.variance_model {choice!r} is not one of {', '.join(VARIANCE_CHOICES)}")
    if choice != "auto":
        return choice
    try:
        return ESTIMATOR_MODELS[estimator]
    except KeyError:
        raise AllocatorError(
            f"--rollout_allocator vip has no gradient-variance model for --algo.advantage.estimator {estimator}; "
            f"supported: {', '.join(ESTIMATOR_MODELS)}, or set --allocator.vip.variance_model rloo or grpo"
        ) from None


class _VipFigures:
    """Prediction, calibration and allocation figures over the cycles since ``metrics()``."""

    def __init__(self) -> None:
        self.predicted: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.missing = 0
        self.offered = 0
        self.at_min = 0
        self.at_max = 0
        self.square_errors: list[np.ndarray] = []
        self.prior_square_errors: list[np.ndarray] = []

    def planned(self, p: np.ndarray, counts: np.ndarray, has_features: np.ndarray, lo: int, hi: int) -> None:
        self.predicted.append(p)
        self.counts.append(counts)
        self.missing += int((~has_features).sum())
        self.offered += int(p.size)
        self.at_min += int((counts == lo).sum())
        self.at_max += int((counts == hi).sum())

    def observed(self, predicted: np.ndarray, rate: np.ndarray, prior_p: float) -> None:
        self.square_errors.append((predicted - rate) ** 2)
        self.prior_square_errors.append((prior_p - rate) ** 2)

    def summary(self) -> dict[str, float]:
        if not self.offered:
            return {}
        p = np.concatenate(self.predicted)
        counts = np.concatenate(self.counts).astype(np.float64)
        p10, p50, p90 = np.percentile(p, [10, 50, 90])
        figures = {
            "vip_pred_p_mean": float(p.mean()),
            "vip_pred_p_std": float(p.std()),
            "vip_pred_p_p10": float(p10),
            "vip_pred_p_p50": float(p50),
            "vip_pred_p_p90": float(p90),
            "vip_alloc_std": float(counts.std()),
            "vip_alloc_at_min_share": self.at_min / self.offered,
            "vip_alloc_at_max_share": self.at_max / self.offered,
            "vip_features_missing_share": self.missing / self.offered,
        }
        if self.square_errors:
            figures["vip_brier"] = float(np.concatenate(self.square_errors).mean())
            figures["vip_brier_prior"] = float(np.concatenate(self.prior_square_errors).mean())
        return figures
