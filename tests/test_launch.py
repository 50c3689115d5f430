"""Our entry point's command line: OpenRLHF's own parser and checks, plus ours.

These run ``openrlhf_cero.cli.train_ppo_ray.main`` with ``--dry_run`` in-process: the
real OpenRLHF 0.11.2 argument parsing and validation, stopping before Ray starts.
"""

from __future__ import annotations

import pytest

from openrlhf_cero.cli.train_ppo_ray import main
from openrlhf_cero.openrlhf.flags import add_allocator_arguments, allocator_settings
from openrlhf_cero.openrlhf.stock_main import parse_stock_args

BASE = [
    "--actor.model_name_or_path", "some/model",
    "--algo.advantage.estimator", "group_norm",
    "--rollout.n_samples_per_prompt", "8",
    "--rollout.batch_size", "16",
    "--train.batch_size", "32",
    "--reward.remote_url", "reward_func.py",
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
    argv = [a for a in BASE if a not in ("--reward.remote_url", "reward_func.py")]
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


def test_global_budget_mode_is_refused_in_the_trainer(capsys):
    code, err = run(capsys, "--rollout_allocator", "cero", "--allocator.cero.budget_mode", "global",
                    "--allocator.cero.global_budget", "100000", "--allocator.cero.global_steps", "100")
    assert code == 2 and "budget_mode global" in err
