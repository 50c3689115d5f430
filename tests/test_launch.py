"""Our entry point's command line: OpenRLHF's own parser and checks, plus ours.

These run ``openrlhf_cero.cli.train_ppo_ray.main`` with ``--dry_run`` in-process: the
real OpenRLHF 0.11.2 argument parsing and validation, stopping before Ray starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from openrlhf_cero.cli.train_ppo_ray import main
from openrlhf_cero.openrlhf.flags import add_allocator_arguments, allocator_settings
from openrlhf_cero.openrlhf.stock_main import parse_stock_args

# Launch checks open the reward function and the prompts: both must exist.
REWARD_FILE = str(Path(__file__).resolve().parents[1] / "recipes" / "math_reward_func.py")
PROMPTS_FILE = Path(tempfile.mkdtemp(prefix="launch_prompts_")) / "prompts.jsonl"
PROMPTS_FILE.write_text('{"input": "1+1=", "label": "2"}\n')

BASE = [
    "--actor.model_name_or_path", "some/model",
    "--algo.advantage.estimator", "group_norm",
    "--rollout.n_samples_per_prompt", "8",
    "--rollout.batch_size", "16",
    "--train.batch_size", "32",
    "--reward.remote_url", REWARD_FILE,
    "--data.prompt_dataset", str(PROMPTS_FILE),
]


def run(capsys, *extra):
    with pytest.raises(SystemExit) as info:
        main([*BASE, *extra])
    return info.value.code, capsys.readouterr().err


def test_dry_run_accepts_valid_flags(capsys):
    main([*BASE, "--rollout_allocator", "uniform", "--dry_run"])
    assert "allocator uniform" in capsys.readouterr().out


def test_both_spellings_are_one_option():
    a = parse_stock_args([*BASE, "--rollout_allocator", "unequal_test"], add_allocator_arguments)
    b = parse_stock_args([*BASE, "--rollout.allocator", "unequal_test"], add_allocator_arguments)
    assert a.rollout.allocator == b.rollout.allocator == "unequal_test"
    assert parse_stock_args(BASE, add_allocator_arguments).rollout.allocator == "uniform"


def test_help_lists_openrlhf_and_our_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--rollout.n_samples_per_prompt", "--actor.model_name_or_path", "--rollout_allocator",
                 "--allocator.min_samples", "--dry_run"):
        assert flag in out


def test_settings_reach_the_allocator():
    args = parse_stock_args(
        [*BASE, "--rollout_allocator", "uniform", "--allocator.min_samples", "3", "--allocator.max_samples", "20",
         "--train.seed", "7"],
        add_allocator_arguments,
    )
    name, settings = allocator_settings(args)
    assert name == "uniform"
    assert settings["min_samples"] == 3 and settings["max_samples"] == 20 and settings["seed"] == 7
    assert settings["n_samples_per_prompt"] == 8 and settings["advantage_estimator"] == "group_norm"


def test_unknown_allocator(capsys):
    code, err = run(capsys, "--rollout_allocator", "ceroo")
    assert code == 2 and "ceroo" in err and "uniform" in err


def test_min_samples_below_two_with_group_estimator(capsys):
    code, err = run(capsys, "--rollout_allocator", "unequal_test", "--allocator.min_samples", "1")
    assert code == 2 and "--allocator.min_samples=1" in err and "group_norm" in err


def test_bounds_that_exclude_n(capsys):
    code, err = run(capsys, "--rollout_allocator", "unequal_test", "--allocator.max_samples", "6")
    assert code == 2 and "--rollout.n_samples_per_prompt=8" in err


def test_reward_model_without_remote_url(capsys):
    argv = [a for a in BASE if a not in ("--reward.remote_url", REWARD_FILE)]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--rollout_allocator", "unequal_test", "--reward.model_name_or_path", "rm"])
    assert info.value.code == 2 and "--reward.remote_url" in capsys.readouterr().err
    main([*argv, "--rollout_allocator", "uniform", "--reward.model_name_or_path", "rm", "--dry_run"])


def test_train_batch_that_does_not_divide_the_step(capsys):
    code, err = run(capsys, "--rollout_allocator", "unequal_test", "--train.batch_size", "48")
    assert code == 2 and "--train.batch_size=48" in err and "128" in err


def test_openrlhfs_own_checks_still_run():
    with pytest.raises(AssertionError, match="n_samples_per_prompt > 1"):
        main([*BASE, "--rollout.n_samples_per_prompt", "1", "--dry_run"])


def test_global_budget_mode_launches_and_refuses_dynamic_filtering(capsys):
    global_mode = ("--rollout_allocator", "cero", "--allocator.cero.budget_mode", "global")
    main([*BASE, *global_mode, "--dry_run"])  # run budget and steps: set by the trainer from the data
    main([*BASE, *global_mode, "--allocator.cero.global_budget", "100000", "--dry_run"])
    code, err = run(capsys, *global_mode, "--algo.dynamic_filtering_enable")
    assert code == 2 and "budget_mode global" in err and "--algo.dynamic_filtering_enable" in err
    code, err = run(capsys, *global_mode, "--allocator.cero.step_ceiling", "0.5")
    assert code == 2 and "--allocator.cero.step_ceiling=0.5 must lie in [1, 16]" in err


# ── first contact: no vLLM installed (the README's own .venv), bad input refused at launch ──

def _without_cpu_mode(*argv: str) -> subprocess.CompletedProcess:
    """The entry point in a fresh process, as a user runs it in the .venv of scripts/setup.sh
    (no vLLM there) without OPENRLHF_CERO_CPU."""
    env = {k: v for k, v in os.environ.items() if k != "OPENRLHF_CERO_CPU"}
    return subprocess.run(
        [sys.executable, "-m", "openrlhf_cero.cli.train_ppo_ray", *argv],
        env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None and not getattr(
    importlib.import_module("vllm"), "IS_CPU_STANDIN", False), reason="a real vLLM is installed")
def test_help_dry_run_and_launch_without_vllm(tmp_path):
    flags = BASE

    shown = _without_cpu_mode("--help")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "--rollout_allocator" in shown.stdout and "--actor.model_name_or_path" in shown.stdout

    dry = _without_cpu_mode(*flags, "--rollout_allocator", "cero", "--dry_run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "allocator cero" in dry.stdout

    launch = _without_cpu_mode(*flags, "--rollout_allocator", "cero")
    assert launch.returncode == 2
    error_lines = [line for line in launch.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and "pip install vllm" in error_lines[0] and "OPENRLHF_CERO_CPU=1" in error_lines[0]


@pytest.mark.parametrize("n", ["0", "-2"])
@pytest.mark.parametrize("estimator", ["group_norm", "reinforce"])
def test_n_samples_below_one_is_caught_before_openrlhfs_asserts(capsys, n, estimator):
    code, err = run(capsys, "--rollout.n_samples_per_prompt", n, "--algo.advantage.estimator", estimator)
    assert code == 2 and f"--rollout.n_samples_per_prompt={n} must be >= 1" in err


def test_reward_threshold_nan(capsys):
    code, err = run(capsys, "--rollout_allocator", "cero", "--allocator.reward_threshold", "nan")
    assert code == 2 and "--allocator.reward_threshold=nan" in err and "finite" in err


def test_options_of_an_allocator_not_selected(capsys):
    code, err = run(capsys, "--rollout_allocator", "vip", "--allocator.cero.prompt_oversample", "2")
    assert code == 2 and "--allocator.cero.prompt_oversample" in err and "--rollout_allocator vip" in err
    code, err = run(capsys, "--allocator.pilot_commit.n_pilot=4")  # uniform by default
    assert code == 2 and "--allocator.pilot_commit.n_pilot" in err


def test_cero_without_skips_that_the_step_loop_cannot_serve(capsys):
    argv = ["--rollout_allocator", "cero", "--allocator.cero.skip", "false", "--rollout.n_samples_per_prompt", "4",
            "--train.batch_size", "16"]
    code, err = run(capsys, *argv, "--allocator.cero.prompt_oversample", "3")
    assert code == 2 and "--allocator.cero.prompt_oversample to at most 2" in err
    main([*BASE, *argv, "--allocator.cero.prompt_oversample", "2", "--dry_run"])
    main([*BASE, *argv, "--dry_run"])  # the default, 1, offers rollout.batch_size prompts: nothing to skip


def test_reward_file_that_does_not_exist(capsys, tmp_path):
    missing = tmp_path / "no_such_reward.py"
    code, err = run(capsys, "--reward.remote_url", str(missing), "--dry_run")
    assert code == 2 and f"--reward.remote_url {missing}: no such file" in err


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_or_missing_prompt_data(capsys, tmp_path, content):
    missing = tmp_path / "absent.jsonl"
    code, err = run(capsys, "--data.prompt_dataset", str(missing), "--dry_run")
    assert code == 2 and f"--data.prompt_dataset {missing}: no such file" in err
    empty = tmp_path / ("empty.json" if content == "[]" else "empty.jsonl")
    empty.write_text(content)
    code, err = run(capsys, "--data.prompt_dataset", str(empty), "--dry_run")
    assert code == 2 and "holds no prompts" in err


def test_max_samples_that_leaves_no_prompt(capsys):
    code, err = run(capsys, "--data.max_samples", "0", "--dry_run")
    assert code == 2 and "--data.max_samples=0 leaves no prompt" in err
