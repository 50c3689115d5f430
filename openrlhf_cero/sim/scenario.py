"""Scenarios: named presets of the simulated training run, plus JSON/YAML overrides.

A scenario fixes everything the simulator needs besides the allocator and the seed:
the difficulty mix of the prompts, the dataset, the batch and group sizes, the
learning dynamics and the target the benchmark measures. Presets are calibrated to
the published figures in docs/sources.md section 3 (see docs/simulator.md for which figure set
which parameter); any field can be overridden from a JSON/YAML mapping or file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from openrlhf_cero.allocators.base import GROUP_ESTIMATORS, AllocatorError
from openrlhf_cero.sim.signal import ESTIMATORS, LOSS_AGG_MODES

SIGNALS = ESTIMATORS  # advantage estimators the simulator models
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Scenario:
    name: str = "custom"
    # ── prompts ──
    # Initial pass rates: a mixture of Beta(a, b) components, [[weight, a, b], ...], plus
    # a share of prompts the policy can never solve (p = 0 throughout).
    difficulty: tuple[tuple[float, float, float], ...] = ((1.0, 0.35, 0.68),)
    unsolvable_share: float = 0.02
    dataset_size: int = 1024
    eval_size: int = 512  # held-out prompts of the same mix: learn only through transfer
    clusters: int = 16  # topics: transfer is stronger within a topic
    # ── run ──
    epochs: float = 50.0  # run length in rollouts: epochs * dataset_size * n (uniform's cost)
    batch_size: int = 64  # prompts trained per step (rollout.batch_size)
    n: int = 8  # n_samples_per_prompt: the step's budget is batch_size * n
    min_samples: int = 2
    max_samples: int = 32
    signal: str = "group_norm"  # --algo.advantage.estimator whose policy gradient the simulated policy follows
    # --actor.loss_agg_mode: token-mean (OpenRLHF's default) or seq-mean-token-mean. With one token
    # per sample (the simulator models no response length) both give the same update.
    loss_agg_mode: str = "token-mean"
    # How a step's gradient becomes an update: "sgd" moves each logit by lr times its gradient;
    # "adam" first divides the step's gradient by the running RMS of its norm (second-moment
    # decay adam_beta2, bias-corrected), as AdamW's per-parameter scaling does for parameters
    # every prompt shares: each optimizer step then moves the policy by about the same amount,
    # whatever the step's groups (docs/simulator.md, "Validated against the real run").
    optimizer: str = "sgd"
    adam_beta2: float = 0.999
    # ── learning dynamics (logit units) ──
    # The step's gradient of OpenRLHF's loss (sim/signal.py) times batch_size, so that a uniform
    # step moves a prompt by lr_self times its group's per-sample mean gradient.
    lr_self: float = 0.028  # own-prompt logit step per unit of scaled gradient
    lr_cluster: float = 0.0028  # topic-wide step per unit of the topic's mean scaled gradient
    lr_global: float = 0.002  # policy-wide step per unit of the step's mean scaled gradient
    drift_sd: float = 0.10  # random walk of every logit, SD per epoch
    # ── benchmark ──
    metric: str = "train"  # "train" (the calibrated figure) or "eval" (held-out prompts) mean pass rate
    target: float = 0.45  # mean pass rate whose cumulative rollouts are the headline

    @property
    def step_budget(self) -> int:
        return self.batch_size * self.n

    @property
    def total_rollouts(self) -> int:
        return int(round(self.epochs * self.dataset_size * self.n))

    @property
    def steps_per_epoch(self) -> float:
        return self.dataset_size / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["difficulty"] = [list(c) for c in self.difficulty]
        return d

    def validate(self) -> "Scenario":
        def bad(key: str, value: Any, valid: str) -> AllocatorError:
            return AllocatorError(f"scenario {self.name!r}: {key}={value!r} is invalid; {valid}")

        if not self.difficulty:
            raise bad("difficulty", self.difficulty, "give at least one [weight, a, b] component")
        for comp in self.difficulty:
            if len(comp) != 3 or comp[0] <= 0 or comp[1] <= 0 or comp[2] <= 0:
                raise bad("difficulty", list(comp), "each component is [weight > 0, a > 0, b > 0]")
        if not 0.0 <= self.unsolvable_share < 1.0:
            raise bad("unsolvable_share", self.unsolvable_share, "use a share in [0, 1)")
        for key in ("dataset_size", "batch_size", "n", "clusters"):
            if getattr(self, key) < 1:
                raise bad(key, getattr(self, key), "use an integer >= 1")
        if self.eval_size < 0:
            raise bad("eval_size", self.eval_size, "use an integer >= 0")
        if self.batch_size > self.dataset_size:
            raise bad("batch_size", self.batch_size, f"use at most dataset_size={self.dataset_size}")
        if self.min_samples < 1 or self.max_samples < self.min_samples:
            raise bad("min_samples/max_samples", (self.min_samples, self.max_samples), "need 1 <= min <= max")
        if self.signal in GROUP_ESTIMATORS and self.min_samples < 2:
            raise bad("min_samples", self.min_samples, f"signal {self.signal} needs groups of at least 2")
        if self.step_budget < self.min_samples * self.batch_size:
            raise bad(
                "n",
                self.n,
                f"the step budget batch_size*n = {self.step_budget} is below min_samples*batch_size = "
                f"{self.min_samples * self.batch_size}; use n >= min_samples={self.min_samples}",
            )
        if self.n > self.max_samples:
            raise bad("n", self.n, f"use n <= max_samples={self.max_samples}")
        if self.signal not in SIGNALS:
            raise bad("signal", self.signal, f"choose one of {', '.join(SIGNALS)}")
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise bad("loss_agg_mode", self.loss_agg_mode, f"choose one of {', '.join(LOSS_AGG_MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, f"choose one of {', '.join(OPTIMIZERS)}")
        if not 0.0 <= self.adam_beta2 < 1.0:
            raise bad("adam_beta2", self.adam_beta2, "use a decay in [0, 1)")
        if self.metric not in ("eval", "train"):
            raise bad("metric", self.metric, "choose 'eval' or 'train'")
        if self.metric == "eval" and self.eval_size < 1:
            raise bad("eval_size", self.eval_size, "metric 'eval' needs eval_size >= 1 (or use metric 'train')")
        if not 0.0 < self.target < 1.0:
            raise bad("target", self.target, "use a mean pass rate in (0, 1)")
        if not math.isfinite(self.epochs) or self.epochs <= 0:
            raise bad("epochs", self.epochs, "use a number > 0")
        for key in ("lr_self", "lr_cluster", "lr_global", "drift_sd"):
            if getattr(self, key) < 0:
                raise bad(key, getattr(self, key), "use a number >= 0")
        return self


# DeepScaleR / Qwen2.5-Math-1.5B, GRPO n=8 (docs/sources.md): the calibration anchor.
_DEEPSCALER = Scenario(name="deepscaler")

PRESETS: dict[str, Scenario] = {
    "deepscaler": _DEEPSCALER,
    # Harder set (DeepMath-like): more all-wrong groups, the case adaptive allocation targets.
    "hard": dataclasses.replace(
        _DEEPSCALER, name="hard", difficulty=((1.0, 0.25, 1.0),), unsolvable_share=0.05, target=0.27
    ),
    # Easy set (GSM8K / Qwen3-1.7B, docs/sources.md): all-correct groups climb from ~0.15 fast.
    "easy": dataclasses.replace(
        _DEEPSCALER,
        name="easy",
        difficulty=((1.0, 1.4, 1.0),),
        unsolvable_share=0.0,
        lr_self=0.3,
        lr_cluster=0.01,
        lr_global=0.005,
        epochs=20.0,
        target=0.85,
    ),
    # CI: a small deepscaler that finishes in seconds per allocator.
    "quick": dataclasses.replace(
        _DEEPSCALER, name="quick", dataset_size=256, eval_size=256, batch_size=32, epochs=12.0, clusters=8,
        target=0.345,
    ),
}

DEFAULT_SCENARIOS = ("deepscaler", "hard", "easy")


def scenario_keys() -> list[str]:
    return [f.name for f in fields(Scenario) if f.name != "name"]


def load_overrides(text_or_path: str | None) -> dict[str, Any]:
    """A JSON or YAML mapping given inline or as a file path."""
    if not text_or_path:
        return {}
    path = Path(text_or_path)
    text = path.read_text() if path.suffix in (".json", ".yaml", ".yml") and path.exists() else text_or_path
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml
        except ImportError:  # pragma: no cover - pyyaml is in the bench extra
            raise AllocatorError(f"could not parse {text_or_path!r} as JSON (install pyyaml for YAML)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise AllocatorError(f"could not parse {text_or_path!r} as JSON or YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise AllocatorError(f"expected a JSON/YAML mapping, got {type(data).__name__}: {text_or_path!r}")
    return dict(data)


def make_scenario(name: str, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Preset ``name`` with ``overrides`` applied and checked."""
    if name not in PRESETS:
        raise AllocatorError(f"unknown --scenario {name!r}; presets: {', '.join(PRESETS)}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(scenario_keys()))
    if unknown:
        raise AllocatorError(
            f"unknown scenario key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(scenario_keys())}"
        )
    base = PRESETS[name]
    typed: dict[str, Any] = {}
    for f in fields(Scenario):
        if f.name not in overrides:
            continue
        value = overrides[f.name]
        if f.name == "difficulty":
            try:
                value = tuple(tuple(float(x) for x in comp) for comp in value)
            except (TypeError, ValueError):
                raise AllocatorError(f"scenario key 'difficulty' must be a list of [weight, a, b], got {value!r}")
        else:
            kind = type(getattr(base, f.name))
            try:
                value = kind(value) if kind is not int or float(value) == int(value) else _not_int(f.name, value)
            except (TypeError, ValueError):
                raise AllocatorError(f"scenario key {f.name!r} must be {kind.__name__}, got {value!r}") from None
        typed[f.name] = value
    return dataclasses.replace(base, **typed).validate()


def _not_int(key: str, value: Any) -> int:
    raise AllocatorError(f"scenario key {key!r} must be an integer, got {value!r}")


__all__ = ["DEFAULT_SCENARIOS", "PRESETS", "Scenario", "load_overrides", "make_scenario", "scenario_keys"]
