"""The bench command: tables, plots, allocators from the registry, and clear errors."""

import json

import pytest

from openrlhf_cero.allocators.base import AllocatorError
from openrlhf_cero.allocators.registry import available_allocators
from openrlhf_cero.cli import bench
from openrlhf_cero.sim.scenario import make_scenario

TINY = json.dumps({"dataset_size": 64, "eval_size": 32, "batch_size": 8, "epochs": 3, "clusters": 4})


def run(capsys, *argv):
    code = bench.main(["--no-progress", *argv])
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


def test_default_allocators_are_every_registered_one_plus_oracle(tmp_path, capsys):
    code, out, _ = run(capsys, "--scenario", "quick", "--scenario-overrides", TINY, "--seeds", "1",
                       "--out", str(tmp_path), "--no-plots")
    for name in available_allocators() + ["oracle"]:
        assert f"| {name} |" in out or f"- {name}:" in out  # in the table, or reported as failed
    assert code in (0, 1)


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
