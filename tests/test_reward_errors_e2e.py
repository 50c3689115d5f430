"""End to end (issue 11): a ``reward_func`` that raises stops the real OpenRLHF trainer with
one error naming the reward file, the exception and the prompt, not a missing flag.

About a minute on 2 cores (docs/cpu.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from openrlhf_cero.cpu.tiny import build, smoke_flags

pytestmark = pytest.mark.e2e

# A common mistake: reading the label as a number when it is "<answer>|p=<rate>".
RAISING_REWARD = textwrap.dedent(
    '''
    import torch


    def reward_func(queries, prompts, labels, **kwargs):
        answers = [float(label) for label in labels]
        return {"rewards": torch.zeros(len(answers)), "scores": torch.zeros(len(answers)), "extra_logs": {}}
    '''
)


def test_raising_reward_function_stops_the_run_with_its_exception_and_prompt(tmp_path):
    assets = build(tmp_path / "assets", prompts=12, seed=0)
    reward = assets / "raising_reward.py"
    reward.write_text(RAISING_REWARD)
    work = tmp_path / "work"
    work.mkdir()
    # CERO offers 3 x rollout.batch_size = 12 prompts in its first step.
    flags = smoke_flags(assets, work, **{"reward.remote_url": reward, "data.max_samples": 12})
    result = subprocess.run(
        [sys.executable, "-m", "openrlhf_cero.cli.train_ppo_ray", *flags, "--rollout_allocator", "cero"],
        cwd=work, env={**os.environ, "OPENRLHF_CERO_CPU": "1", "PYTHONUNBUFFERED": "1"},
        capture_output=True, text=True, timeout=600,
    )
    log = result.stdout + result.stderr
    (work / "run.log").write_text(log)
    assert result.returncode != 0, f"the run did not fail; log tail:\n{log[-6000:]}"
    error = re.search(
        rf"RewardError: the reward function {re.escape(str(reward))} failed on prompt \d+ "
        r"'Question: What is \d+ [-+*] \d+\?\\nAnswer:': ValueError: could not convert string to float: "
        rf"'[^']*\|p=[0-9.]+' \(at {re.escape(str(reward))} line 6, in [^)]+\); \d+ of \d+ rollouts",  # <listcomp> before 3.12
        log,
    )
    assert error, f"no RewardError with file, prompt and exception; log tail:\n{log[-6000:]}"
    assert "pass --reward.remote_url" not in log
