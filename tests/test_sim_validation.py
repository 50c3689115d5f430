"""The validation of the simulator against a real run (openrlhf_cero.sim.validation).

The instrument is checked on a case whose answer is known: a "real run" produced by the
simulator itself at a known learning rate. The validation must recover that rate from
uniform alone and find the twin inside the real intervals; and the difficulty fit must
recover a known mixture from pass counts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from openrlhf_cero.sim.calibration import zero_variance_share
from openrlhf_cero.sim.runner import run_allocator
from openrlhf_cero.sim.scenario import PRESETS
from openrlhf_cero.sim.validation.difficulty_fit import fit_difficulty, mixture_log_likelihood
from openrlhf_cero.sim.validation.real_results import RealResultsError, parse_real_results
from openrlhf_cero.sim.validation.side_by_side import compare, run_twin, t_interval
from openrlhf_cero.sim.validation.twin import base_twin, calibrate, scaled

TRUE_MIXTURE = ((0.35, 0.05, 5.0), (0.35, 1.5, 1.5), (0.30, 20.0, 0.3))


def _counts(size: int, trials: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    component = rng.choice(3, size=size, p=[c[0] for c in TRUE_MIXTURE])
    a = np.array([c[1] for c in TRUE_MIXTURE])[component]
    b = np.array([c[2] for c in TRUE_MIXTURE])[component]
    return rng.binomial(trials, rng.beta(a, b))


def test_difficulty_fit_recovers_a_known_mixture_from_pass_counts():
    successes = _counts(2000, 16, seed=0)
    fitted = fit_difficulty(successes, 16)
    trials = np.full(successes.size, 16)
    # at least as likely as the truth (maximum likelihood), and the same shape of data
    assert mixture_log_likelihood(successes, trials, fitted) >= mixture_log_likelihood(successes, trials, TRUE_MIXTURE) - 1e-6
    weights = np.array([c[0] for c in fitted])
    means = np.array([a / (a + b) for _, a, b in fitted])
    assert weights.sum() == pytest.approx(1.0)
    assert np.all(np.diff(means) > 0)  # ordered hard to easy
    # Components are not identifiable from 16 trials (a wide middle Beta and an easy one
    # overlap); what the simulator needs is identifiable: the mean pass rate and the share
    # of all-equal groups at the group sizes allocators use.
    scenario = dataclasses.replace(PRESETS["deepscaler"], unsolvable_share=0.0)
    for n in (4, 8, 16):
        fitted_share = zero_variance_share(dataclasses.replace(scenario, difficulty=fitted), n)
        true_share = zero_variance_share(dataclasses.replace(scenario, difficulty=TRUE_MIXTURE), n)
        assert fitted_share == pytest.approx(true_share, abs=0.02)
    true_mean = sum(w * a / (a + b) for w, a, b in TRUE_MIXTURE)
    assert weights @ means == pytest.approx(true_mean, abs=0.02)


def test_difficulty_fit_refuses_counts_outside_the_trials():
    with pytest.raises(ValueError, match=r"\[0, trials\]"):
        fit_difficulty(np.array([3, 17]), 16)


# ── a "real run" that is the simulator itself, at a known learning rate ──

KNOWN_SCALE = 10.0
SEEDS = (0, 1, 2, 3, 4, 5)
TWIN_SEEDS = tuple(range(12))  # the twin's own noise stays well inside the real intervals
ENTRIES = ("uniform", "cero")


def _simulated_real_results() -> dict:
    """A results file in the real run's format whose "real" runs are simulator runs."""
    successes = _counts(256, 16, seed=1)
    skeleton = {
        "config": dict(
            train_size=256, eval_size=128, batch_prompts=16, n=8, min_samples=2, max_samples=32, total_rollouts=256 * 8 * 10
        ),
        "warmup": {
            "train_prompts": {"samples": 16, "pass_rate": (successes / 16).tolist(), "bucket": [i % 8 for i in range(256)]}
        },
        "runs": {},
    }
    placeholder = {"allocator": "uniform", "seed": 0, "evals": [{"rollouts": 0, "train": 0, "held_out": 0}]}
    real = parse_real_results({**skeleton, "runs": {"u": placeholder}})  # its setting, to build the truth from
    truth = scaled(base_twin(real), KNOWN_SCALE)
    for entry in ENTRIES:
        for seed in SEEDS:
            r = run_allocator(truth, entry, seed + 100)  # other seeds than the twin's
            points = zip(r.cum_rollouts, r.train_pass_rate, r.eval_pass_rate)
            evals = [{"rollouts": int(x), "train": float(t), "held_out": float(h)} for x, t, h in points]
            skeleton["runs"][f"{entry}-{seed}"] = {"allocator": entry, "seed": seed, "evals": evals}
    return skeleton


@pytest.fixture(scope="module")
def simulated_real():
    return parse_real_results(_simulated_real_results())


@pytest.fixture(scope="module")
def calibration(simulated_real):
    return calibrate(simulated_real, seeds=SEEDS)


def test_calibration_on_uniform_recovers_the_learning_rate_of_the_run(calibration):
    assert calibration.twin_gain == pytest.approx(calibration.real_gain, rel=0.02)
    assert calibration.scale == pytest.approx(KNOWN_SCALE, rel=0.15)


def test_twin_of_the_simulator_lies_inside_its_intervals(simulated_real, calibration):
    records = run_twin(calibration, ENTRIES, TWIN_SEEDS)
    comparison = compare(simulated_real, records)
    assert comparison.entries == list(ENTRIES)
    for entry in ENTRIES:
        assert comparison.gain_agrees(entry), comparison.markdown()
        assert comparison.speedup_agrees(entry), comparison.markdown()
    assert comparison.real_ranking == comparison.twin_ranking
    table = comparison.markdown()
    assert table.count("\n") == 1 + len(ENTRIES)
    assert "| uniform | 1.00 [1.00, 1.00] | 1.00 | yes | 1.00 [1.00, 1.00] | 1.00 | yes |" in table


def test_t_interval_matches_scipy_and_skips_unreached_seeds():
    values = [1.0, 2.0, 4.0, math.nan]
    interval = t_interval(values)
    from scipy import stats

    low, high = stats.t.interval(0.95, 2, loc=np.mean(values[:3]), scale=stats.sem(values[:3]))
    assert (interval.low, interval.high, interval.seeds) == (pytest.approx(low), pytest.approx(high), 3)
    assert t_interval([math.nan]).text() == "not reached"


def test_results_without_starting_pass_rates_name_the_missing_key():
    with pytest.raises(RealResultsError, match="'warmup'.* has no 'train_prompts'"):
        parse_real_results({"config": {}, "warmup": {}, "runs": {}})


def test_the_simulator_page_shows_the_committed_comparison():
    """docs/simulator.md's validation section is what the committed real results and the
    committed twin figures give (python -m openrlhf_cero.cli.validate_sim --from-saved)."""
    import json

    from openrlhf_cero.cli.validate_sim import BEGIN, END, REAL_RESULTS, SIMULATOR_DOC, TWIN_RESULTS, section
    from openrlhf_cero.sim.validation.real_results import read_real_results

    page = SIMULATOR_DOC.read_text()
    shown = BEGIN + page.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert shown == section(read_real_results(REAL_RESULTS), json.loads(TWIN_RESULTS.read_text()))
