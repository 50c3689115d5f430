"""``--rollout_scheduler`` on our entry point: the flags parse on OpenRLHF's own parser, bad
settings are refused at launch naming the flag, and the math GRPO recipe takes the
scheduler as an argument. In-process ``--dry_run``s (OpenRLHF 0.11.2's parser and checks,
then ours), nothing starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from openrlhf_cero.cli.train_ppo_ray import main
from openrlhf_cero.openrlhf.native import add_plugin_arguments
from openrlhf_cero.openrlhf.stock_main import parse_stock_args

REPO = Path(__file__).resolve().parents[1]
REWARD_FILE = str(REPO / "recipes" / "math_reward_func.py")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    prompts.write_text('{"input": "1+1=", "label": "2"}\n')
    return [
        "--actor.model_name_or_path", "some/model",
        "--algo.advantage.estimator", "group_norm",
        "--rollout.n_samples_per_prompt", "8",
        "--rollout.batch_size", "16",
        "--train.batch_size", "32",
        "--reward.remote_url", REWARD_FILE,
        "--data.prompt_dataset", str(prompts),
    ]


def refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--dry_run"])
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("allocator", ["uniform", "cero", "vip", "pilot_commit"])
def test_cbs_passes_the_dry_run_with_every_allocator(base, capsys, allocator):
    main([*base, "--rollout_allocator", allocator, "--rollout_scheduler", "cbs", "--scheduler.cbs.buffer_size", "64",
          "--dry_run"])
    out = capsys.readouterr().out
    assert f"allocator {allocator}" in out and "scheduler cbs" in out and "'buffer_size': 64" in out


def test_both_spellings_are_one_option_and_none_is_the_default(base):
    a = parse_stock_args([*base, "--rollout_scheduler", "cbs"], add_plugin_arguments)
    b = parse_stock_args([*base, "--rollout.scheduler", "cbs", "--scheduler.seed", "7"], add_plugin_arguments)
    assert a.rollout.scheduler == b.rollout.scheduler == "cbs" and b.scheduler.seed == 7
    assert parse_stock_args(base, add_plugin_arguments).rollout.scheduler == "none"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rollout_scheduler", "nope"], "unknown --rollout_scheduler 'nope'; valid: none, cbs"),
        (["--rollout_scheduler", "cbs", "--scheduler.cbs.buffer_size", "0"],
         "--scheduler.cbs.buffer_size=0 must be >= 1"),
        (["--rollout_scheduler", "cbs", "--scheduler.cbs.buffer_size", "-5"],
         "--scheduler.cbs.buffer_size=-5 must be >= 1"),
        (["--rollout_scheduler", "cbs", "--scheduler.cbs.max_staleness", "0"],
         "--scheduler.cbs.max_staleness=0 must be >= 1"),
        (["--scheduler.cbs.buffer_size", "64"],
         "--scheduler.cbs.buffer_size is a scheduler flag, but --rollout_scheduler is none"),
        (["--scheduler.seed", "3"], "--scheduler.seed is a scheduler flag, but --rollout_scheduler is none"),
        (["--rollout_scheduler", "cbs", "--scheduler.cbs.max_reuse_share", "2"], "--rollout_scheduler cbs: "),
        (["--rollout_scheduler", "cbs", "--algo.kl.target", "0.1"], "--algo.kl.target (adaptive KL)"),
    ],
)
def test_bad_scheduler_settings_are_refused_naming_the_flag(base, capsys, extra, message):
    assert message in refused(capsys, [*base, *extra])


def test_gae_is_refused(base, capsys, tmp_path):
    argv = [*base, "--rollout_scheduler", "cbs", "--algo.advantage.estimator", "gae",
            "--critic.model_name_or_path", "some/critic"]
    assert "--algo.advantage.estimator gae is not supported" in refused(capsys, argv)


def test_adaptive_kl_is_accepted_as_a_loss(base, capsys):
    main([*base, "--rollout_scheduler", "cbs", "--algo.kl.target", "0.1", "--algo.kl.use_loss", "--dry_run"])
    assert "scheduler cbs" in capsys.readouterr().out


def test_a_scheduler_without_rewards_at_generation_is_refused(base, capsys):
    argv = [a for a in base if a not in ("--reward.remote_url", REWARD_FILE)]
    err = refused(capsys, [*argv, "--reward.model_name_or_path", "some/rm", "--rollout_scheduler", "cbs"])
    assert "--rollout_scheduler cbs needs each rollout's reward when it is generated" in err
    assert "--reward.remote_url" in err


def test_a_scheduler_without_the_runtime_hooks_is_refused(base, capsys, monkeypatch):
    monkeypatch.setenv("OPENRLHF_CERO_RUNTIME_HOOKS", "0")
    err = refused(capsys, [*base, "--rollout_scheduler", "cbs"])
    assert "--rollout_scheduler cbs needs the plugin's runtime hooks" in err


def recipe(*args: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(REPO / "recipes" / "grpo_math.sh"), *args], env={**os.environ, "PRINT_FLAGS": "1"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("allocator", ["cero", "uniform"])
def test_grpo_recipe_takes_the_scheduler_as_an_argument(capsys, allocator):
    flags = recipe(allocator, "cbs", "--scheduler.cbs.max_staleness", "2")
    assert flags[flags.index("--rollout_scheduler") + 1] == "cbs"
    assert flags[flags.index("--ckpt.path") + 1].endswith(f"math-{allocator}-cbs-group_norm/ckpt")
    main([*flags, "--dry_run"])
    out = capsys.readouterr().out
    assert f"allocator {allocator}" in out and "scheduler cbs" in out and "'max_staleness': 2" in out
    assert "--rollout_scheduler" not in recipe(allocator)


def test_grpo_recipe_refuses_an_unknown_scheduler():
    result = subprocess.run(
        ["bash", str(REPO / "recipes" / "grpo_math.sh"), "cero", "nope"], env={**os.environ, "PRINT_FLAGS": "1"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "unknown scheduler 'nope'" in result.stderr
