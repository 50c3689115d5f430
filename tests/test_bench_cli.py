"""The bench command: tables, plots, allocators from the registry, and clear errors."""

import json
import re

import numpy as np
import pytest

from openrlhf_cero.allocators.base import AllocatorError
from openrlhf_cero.allocators.registry import available_allocators
from openrlhf_cero.cli import bench
from openrlhf_cero.sim.baselines import BASELINE_NAMES, BASELINES
from openrlhf_cero.sim.runner import RunRecord
from openrlhf_cero.sim.summary import best_baseline, summarise
from openrlhf_cero.sim.scenario import make_scenario

TINY = json.dumps({"dataset_size": 64, "eval_size": 32, "batch_size": 8, "epochs": 3, "clusters": 4})


def run(capsys, *argv):
    code = bench.main(["--no-progress", *(argv if "--jobs" in argv else (*argv, "--jobs", "1"))])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_table_and_plots(tmp_path, capsys):
    code, out, _ = run(
        capsys, "--allocators", "uniform,oracle", "--scenario", "quick", "--scenario-overrides", TINY,
        "--seeds", "2", "--out", str(tmp_path),
    )
    assert code == 0
    assert "| uniform |" in out and "| oracle |" in out
    for name in ("quick_pass_rate.png", "quick_allocation.png", "quick_zero_variance.png"):
        png = (tmp_path / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (tmp_path / "quick.md").read_text().startswith("| allocator |")


def test_default_allocators_are_the_baselines_every_registered_one_and_oracle(tmp_path, capsys):
    code, out, _ = run(capsys, "--scenario", "quick", "--scenario-overrides", TINY, "--seeds", "1",
                       "--out", str(tmp_path), "--no-plots")
    for name in available_allocators() + list(BASELINE_NAMES) + ["oracle"]:
        assert f"| {name} |" in out or f"- {name}:" in out  # in the table, or reported as failed
    assert code in (0, 1)
    assert bench.default_allocators()[:4] == list(BASELINE_NAMES) and bench.default_allocators()[-1] == "oracle"
    assert set(BASELINES).isdisjoint(available_allocators())  # simulator-only entries


def test_every_entry_is_measured_against_uniform_and_the_best_baseline(tmp_path, capsys):
    code, out, _ = run(capsys, "--allocators", "uniform,oversample_even,beta_greedy,cero,oracle", "--quick",
                       "--scenario-overrides", TINY, "--seeds", "2", "--out", str(tmp_path), "--no-plots")
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("| allocator |"))
    assert "speed-up vs uniform (x)" in header and "speed-up vs best baseline (x)" in header
    assert re.search(r"^Best baseline: (\*\*\w+\*\*|none)", out, re.M)
    assert re.search(r"^- cero: ", out, re.M)


def _record(name: str, seed: int, rollouts_to_target: float | None) -> RunRecord:
    """A run whose pass rate rises linearly from 0.3 and crosses 0.5 at ``rollouts_to_target``
    (None: stays at 0.3)."""
    cum = np.linspace(0, 400, 41)
    zeros = np.zeros(cum.size, dtype=np.int64)
    rate = 0.3 + (0.2 * cum / rollouts_to_target if rollouts_to_target else 0.0 * cum)
    return RunRecord(name, seed, cum, rate, rate, zeros, zeros, zeros, zeros, np.zeros(cum.size), np.zeros(3, dtype=np.int64))


def test_best_baseline_is_the_fastest_baseline_that_reached_on_every_seed():
    scenario = make_scenario("quick", {"target": 0.5})
    times = {"uniform": (100, 110), "oversample_even": (80, 90), "beta_greedy": (50, 60), "cero": (70, 55),
             "oracle": (25, 30)}
    records = {name: [_record(name, s, t) for s, t in enumerate(ts)] for name, ts in times.items()}
    summaries = {s.allocator: s for s in summarise(scenario, records)}
    assert best_baseline(list(summaries.values())) == "beta_greedy"
    assert summaries["cero"].ratio_to_best_baseline.mean == pytest.approx((50 / 70 + 60 / 55) / 2)
    assert summaries["cero"].ratio_to_uniform.mean == pytest.approx((100 / 70 + 110 / 55) / 2)
    assert summaries["beta_greedy"].ratio_to_best_baseline.mean == pytest.approx(1.0)
    text = bench.verdict(scenario, records)
    assert "Best baseline: **beta_greedy**" in text
    assert re.search(r"- oracle: [\d.]+x fewer rollouts than uniform; [\d.]+x fewer rollouts than the best baseline", text)
    # a baseline faster on average but short of the target on one seed is not the best
    records["oversample_even"][1] = _record("oversample_even", 1, None)
    records["oversample_even"][0] = _record("oversample_even", 0, 10)
    assert best_baseline(summarise(scenario, records)) == "beta_greedy"
    # an entry that reaches the target where uniform does not is said so, not "did not reach"
    records["uniform"] = [_record("uniform", s, None) for s in range(2)]
    text = bench.verdict(scenario, records)
    assert "- cero: reached the target, which uniform did not" in text
    assert "Best baseline: **beta_greedy**" in text


def test_parallel_runs_give_the_same_table(tmp_path, capsys):
    argv = ["--allocators", "uniform,dynamic_filtering,oracle", "--scenario", "quick", "--scenario-overrides", TINY,
            "--seeds", "2", "--out", str(tmp_path), "--no-plots"]
    _, serial, _ = run(capsys, *argv, "--jobs", "1")
    _, parallel, _ = run(capsys, *argv, "--jobs", "2")
    strip_ms = lambda text: [line.rsplit("|", 2)[0] for line in text.splitlines() if line.startswith("| ")]  # noqa: E731
    assert strip_ms(serial) == strip_ms(parallel)


def test_baseline_options_reach_the_baseline_and_are_checked(tmp_path, capsys):
    code, out, _ = run(capsys, "--allocators", "uniform,oversample_even", "--scenario", "quick",
                       "--scenario-overrides", TINY, "--allocator-options", '{"oversample_even": {"prompt_oversample": 2}}',
                       "--seeds", "1", "--out", str(tmp_path), "--no-plots")
    assert code == 0 and "| oversample_even |" in out
    code, _, err = run(capsys, "--allocators", "uniform,beta_greedy", "--allocator-options",
                       '{"beta_greedy": {"k": 2}}')
    assert code == 2 and "unknown option(s) k for allocator 'beta_greedy'" in err and "forgetting" in err


def test_unreachable_target_is_reported_not_a_crash(tmp_path, capsys):
    overrides = json.loads(TINY) | {"target": 0.99}
    code, out, _ = run(capsys, "--allocators", "uniform,oracle", "--scenario", "quick",
                       "--scenario-overrides", json.dumps(overrides), "--seeds", "1", "--out", str(tmp_path),
                       "--no-plots")
    assert code == 0
    assert out.count("not reached") >= 2


def test_allocator_options_reach_the_allocator(tmp_path, capsys):
    code, out, _ = run(capsys, "--allocators", "uniform,unequal_test", "--scenario", "quick",
                       "--scenario-overrides", TINY, "--allocator-options", '{"unequal_test": {"extra_round": true}}',
                       "--seeds", "1", "--out", str(tmp_path), "--no-plots")
    assert code == 0 and "| unequal_test |" in out


def test_yaml_override_file(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("dataset_size: 64\neval_size: 32\nbatch_size: 8\nepochs: 2\nn: 4\nclusters: 2\n")
    code, out, _ = run(capsys, "--allocators", "uniform", "--scenario", "quick", "--scenario-overrides", str(path),
                       "--seeds", "1", "--out", str(tmp_path), "--no-plots")
    assert code == 0 and "(512 per run)" in out.replace(",", "")  # 2 epochs * 64 prompts * n=4


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--allocators", "uniform,nope"], ["unknown --rollout_allocator 'nope'", "uniform"]),
        (["--scenario", "nope"], ["unknown --scenario 'nope'", "deepscaler"]),
        (["--scenario-overrides", '{"batch": 3}'], ["unknown scenario key(s) 'batch'", "batch_size"]),
        (["--scenario-overrides", '{"n": 1}'], ["n=1", "min_samples*batch_size", "n >= min_samples=2"]),
        (["--scenario-overrides", '{"dataset_size": "many"}'], ["dataset_size", "must be int"]),
        (["--allocator-options", '{"vip2": {}}'], ["vip2", "not benchmarked"]),
        (["--seeds", "0"], ["--seeds must be >= 1"]),
        (["--jobs", "0"], ["--jobs must be >= 1"]),
        (["--allocators", "uniform,beta_greedy,nope"], ["unknown --rollout_allocator 'nope'", "baselines:"]),
    ],
)
def test_bad_input_gives_a_clear_error(capsys, argv, words):
    code, _, err = run(capsys, *argv)
    assert code == 2
    for word in words:
        assert word in err


def test_budget_below_min_samples_times_batch_is_refused():
    with pytest.raises(AllocatorError, match="below min_samples\\*batch_size"):
        make_scenario("deepscaler", {"n": 2, "min_samples": 4, "max_samples": 8})


@pytest.mark.slow
def test_quick_mode_all_allocators(tmp_path, capsys):
    code, out, _ = run(capsys, "--quick", "--out", str(tmp_path), "--no-plots")
    assert "| oracle |" in out and "| uniform |" in out
    assert code in (0, 1)
