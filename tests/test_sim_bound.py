"""The oracle bounds: no registered allocator and no baseline beats it on the bench scenarios.

Every entry of the bench's default list (every registered allocator, every baseline)
runs against the oracle on each default scenario, shortened, over a few seeds. An entry
"beats" the oracle when its mean paired difference (same seed: same data, same order) in
the scenario's objective exceeds 2 SD of that difference over seeds: the final pass rate
at equal rollouts, the mean pass rate over the run (area under the curve), and the final
held-out pass rate.
"""

import numpy as np
import pytest

from openrlhf_cero.cli.bench import default_allocators, default_jobs, run_benchmark
from openrlhf_cero.sim.runner import ORACLE
from openrlhf_cero.sim.scenario import DEFAULT_SCENARIOS, make_scenario
from openrlhf_cero.sim.summary import equal_rollouts, pass_rate_at

SEEDS = (0, 1, 2)
SHORT = {"dataset_size": 256, "eval_size": 128, "batch_size": 32, "clusters": 8}
EPOCHS = {"deepscaler": 12.0, "hard": 12.0, "easy": 6.0}


def _area(record, metric: str, end: int) -> float:
    grid = np.linspace(0, end, 101)
    return float(np.interp(grid, record.cum_rollouts, record.metric(metric)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("name", DEFAULT_SCENARIOS)
def test_no_allocator_or_baseline_beats_the_oracle(name):
    scenario = make_scenario(name, {**SHORT, "epochs": EPOCHS[name]})
    entries = default_allocators()
    assert ORACLE in entries and {"dynamic_filtering", "oversample_even", "beta_greedy"} <= set(entries)
    records, _failures = run_benchmark(scenario, entries, SEEDS, progress=False, jobs=default_jobs())
    assert ORACLE in records
    end = equal_rollouts(records)
    measures = {
        "final objective": lambda r: pass_rate_at(r, scenario.metric, end),
        "mean objective over the run": lambda r: _area(r, scenario.metric, end),
        "final held-out": lambda r: pass_rate_at(r, "eval", end),
    }
    beaten = []
    for entry, runs in records.items():
        if entry == ORACLE:
            continue
        for label, measure in measures.items():
            diff = np.array([measure(r) - measure(o) for r, o in zip(runs, records[ORACLE])])
            if diff.mean() > 0 and diff.mean() > 2 * diff.std(ddof=1):
                beaten.append(f"{entry} beats the oracle on {label} by {diff.mean():.4f} (SD {diff.std(ddof=1):.4f})")
    assert not beaten, beaten
    assert len(records) >= 5  # uniform, three baselines, the oracle at least (a failing allocator is no bound breach)
