"""Reward failures reach the user as one clear error naming the prompt (issue 11).

OpenRLHF 0.11.2's rollout actor (``SingleTurnAgentExecutor.execute``) catches any
exception of the ``reward_func`` loaded from ``--reward.remote_url x.py`` (and of the
HTTP reward client), logs only ``str(e)`` at INFO and returns the rollout with
``reward=None``. These tests drive the allocating generator with OpenRLHF's real
rollout actors (stand-in engine, docs/cpu.md) and a test reward file whose behaviour
is chosen by each prompt's label.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from openrlhf_cero import cpu
from openrlhf_cero.allocators import AllocatorError, prompt_id
from openrlhf_cero.cpu.tiny import build, smoke_flags
from openrlhf_cero.openrlhf.flags import add_allocator_arguments, allocator_from_args
from openrlhf_cero.openrlhf.stock_main import parse_stock_args

pytestmark = pytest.mark.slow

# label "<kind>:<tag>": raise -> ValueError, none -> returns None, nan / big -> that reward, ok -> 1.
REWARD_FILE = textwrap.dedent(
    '''
    import torch


    def reward_func(queries, prompts, labels, **kwargs):
        kind, _, tag = str(labels[0]).partition(":")
        if kind == "raise":
            raise ValueError(f"cannot grade answer {tag}")
        if kind == "none":
            return None
        value = {"nan": float("nan"), "big": 3.0, "ok": 1.0}[kind]
        rewards = torch.tensor([value] * len(queries))
        return {"rewards": rewards, "scores": rewards, "extra_logs": {}}
    '''
)


def prompt_text(i: int) -> str:
    # Longer than the 60 characters an error quotes.
    return f"Question {i}: what is {i} + {i + 1}? Show every step of the working, then answer."


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    out = build(tmp_path_factory.mktemp("assets"), prompts=4, seed=3)
    (out / "labelled_reward.py").write_text(REWARD_FILE)
    return out


@pytest.fixture(scope="module")
def engines(assets, tmp_path_factory):
    import ray
    from openrlhf.trainer.ray import create_vllm_engines

    cpu.install()
    ray.init(**cpu.ray_init_kwargs())
    args = openrlhf_args(assets, tmp_path_factory.mktemp("work"), prompts(tmp_path_factory.mktemp("p"), ["ok"]))
    yield create_vllm_engines(
        1, 1, args.actor.model_name_or_path, args.train.seed, False, False, False, args.data.max_len,
        None, args.vllm.gpu_memory_utilization, False, None, remote_rm_url=args.reward.remote_url,
    )
    ray.shutdown()


def prompts(directory: Path, labels: list[str]) -> Path:
    path = Path(directory) / "prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, label in enumerate(labels):
            f.write(json.dumps({"input": prompt_text(i), "label": label}) + "\n")
    return path


def openrlhf_args(assets: Path, work: Path, dataset: Path, *extra: str):
    reward = assets / "labelled_reward.py"
    flags = smoke_flags(assets, work, **{"data.prompt_dataset": dataset, "reward.remote_url": reward})
    return parse_stock_args([*flags, *extra], add_allocator_arguments)


def generate(assets: Path, work: Path, engines, labels: list[str], *extra: str):
    """One generate_samples call over a dataset with these labels."""
    from openrlhf.trainer.ppo_trainer import prepare_datasets
    from openrlhf.utils import get_strategy
    from openrlhf.utils.utils import get_tokenizer

    from openrlhf_cero.openrlhf.generator import AllocatingSamplesGenerator

    args = openrlhf_args(assets, work, prompts(work, labels), *extra)
    strategy = get_strategy(args)
    tokenizer = get_tokenizer(args.actor.model_name_or_path, None, "left", strategy)
    loader, _, _ = prepare_datasets(strategy, tokenizer)
    generator = AllocatingSamplesGenerator(
        strategy=strategy, prompts_dataloader=loader, eval_dataloader=None, tokenizer=tokenizer,
        vllm_engines=engines, allocator=allocator_from_args(args),
    )
    return generator.generate_samples(
        do_sample=True, max_len=args.data.max_len, max_new_tokens=args.rollout.max_new_tokens,
        temperature=args.rollout.temperature, top_p=args.rollout.top_p,
    )


def quotes_prompt(message: str, i: int) -> bool:
    """The message quotes the first 60 characters of prompt i (and not the 61st)."""
    text = prompt_text(i)
    return text[:60] in message and text[:61] not in message


def test_raising_reward_function_names_file_exception_and_prompt(assets, tmp_path, engines):
    with pytest.raises(Exception) as caught:
        generate(assets, tmp_path, engines, ["ok:0", "ok:1", "raise:two", "ok:3"], "--rollout_allocator", "uniform")
    message = str(caught.value)
    assert str(assets / "labelled_reward.py") in message
    assert "ValueError: cannot grade answer two" in message
    assert quotes_prompt(message, 2) and str(prompt_id(prompt_text(2), "raise:two")) in message
    assert "4 of 16 rollouts" in message


def test_cero_does_not_blame_a_missing_flag_when_the_reward_function_raises(assets, tmp_path, engines):
    """Every prompt raises; the error quotes the prompt whose exception it reports."""
    labels = [f"raise:tag{i}" for i in range(16)]
    with pytest.raises(Exception) as caught:
        generate(assets, tmp_path, engines, labels, "--rollout_allocator", "cero")
    message = str(caught.value)
    assert "pass --reward.remote_url" not in message
    assert "ValueError: cannot grade answer tag" in message
    reported = int(message.split("cannot grade answer tag")[1].split()[0].strip(".,;:'\""))
    assert quotes_prompt(message, reported)


def test_reward_function_returning_nothing_is_reported(assets, tmp_path, engines):
    with pytest.raises(Exception) as caught:
        generate(assets, tmp_path, engines, ["ok:0", "none:1", "ok:2", "ok:3"], "--rollout_allocator", "uniform")
    message = str(caught.value)
    assert "returned None" in message and quotes_prompt(message, 1)
    assert str(assets / "labelled_reward.py") in message


def test_nan_reward_names_prompt_id_and_text(assets, tmp_path, engines):
    with pytest.raises(AllocatorError) as caught:
        generate(assets, tmp_path, engines, ["ok:0", "ok:1", "ok:2", "nan:3"], "--rollout_allocator", "uniform")
    message = str(caught.value)
    assert f"reward is NaN for prompt {prompt_id(prompt_text(3), 'nan:3')}" in message
    assert quotes_prompt(message, 3)
    assert str(assets / "labelled_reward.py") in message


def test_out_of_range_reward_names_prompt_text_unless_thresholded(assets, tmp_path, engines):
    labels = ["ok:0", "big:1", "ok:2", "ok:3"]
    with pytest.raises(AllocatorError) as caught:
        generate(assets, tmp_path, engines, labels, "--rollout_allocator", "uniform")
    message = str(caught.value)
    assert f"reward 3 for prompt {prompt_id(prompt_text(1), 'big:1')} lies outside [0, 1]" in message
    assert "--allocator.reward_threshold" in message and quotes_prompt(message, 1)

    batch, _, _, _ = generate(assets, tmp_path / "t", engines, labels, "--rollout_allocator", "uniform",
                              "--allocator.reward_threshold", "0.5")
    assert len(batch) == 16


def test_probe_records_the_exception_inside_openrlhfs_executor(assets):
    """The wrapper put around the rollout actor's reward call (here in-process) records the
    exception and re-raises it, so OpenRLHF's own handling is unchanged."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from openrlhf_cero.openrlhf.generator import _install_reward_probe, _take_reward_failures

    actor = SimpleNamespace(executor=SingleTurnAgentExecutor([str(assets / "labelled_reward.py")]))
    assert _install_reward_probe(actor) and _install_reward_probe(actor)  # idempotent
    with pytest.raises(ValueError, match="cannot grade answer x"):
        asyncio.run(actor.executor._fetch_rewards_via_func(["q"], ["the prompt"], ["raise:x"]))
    ok = asyncio.run(actor.executor._fetch_rewards_via_func(["q"], ["fine"], ["ok:0"]))
    assert float(ok[0]["rewards"][0]) == 1.0
    failures = _take_reward_failures(actor)
    assert len(failures) == 1 and failures[0]["prompt"] == "the prompt" and failures[0]["label"] == "raise:x"
    assert failures[0]["error"] == "ValueError: cannot grade answer x"
    assert "labelled_reward.py" in failures[0]["where"]
    assert _take_reward_failures(actor) == []
    # No reward endpoint (a reward model scores later): nothing to wrap.
    assert not _install_reward_probe(SimpleNamespace(executor=SingleTurnAgentExecutor(None)))


def test_without_the_actors_record_the_error_points_to_their_log(assets, tmp_path, engines, monkeypatch):
    """If the rollout actors kept nothing (their reward call could not be wrapped), the error
    still names the prompt and says where OpenRLHF logged the cause."""
    from openrlhf_cero.openrlhf.generator import AllocatingSamplesGenerator, _take_reward_failures

    monkeypatch.setattr(AllocatingSamplesGenerator, "_reward_failures", lambda self: [])
    with pytest.raises(Exception) as caught:
        generate(assets, tmp_path, engines, ["ok:0", "raise:1", "ok:2", "ok:3"], "--rollout_allocator", "uniform")
    message = str(caught.value)
    assert f"the reward function {assets / 'labelled_reward.py'} gave no reward for prompt" in message
    assert quotes_prompt(message, 1) and "[SingleTurnExecutor] Failed to fetch reward from remote RM" in message
    import ray

    ray.get([engine.__ray_call__.remote(_take_reward_failures) for engine in engines])  # drop what they kept


def test_probe_records_a_failing_reward_server():
    """OpenRLHF's HTTP client retries 5 times, then raises; the record keeps that error."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from openrlhf_cero.openrlhf.generator import _install_reward_probe, _take_reward_failures

    actor = SimpleNamespace(executor=SingleTurnAgentExecutor(["http://127.0.0.1:9/get_reward"]))
    assert _install_reward_probe(actor)
    with pytest.raises(RuntimeError):
        asyncio.run(actor.executor._fetch_rewards_via_http(["q"], ["the prompt"], ["label"]))
    [failure] = _take_reward_failures(actor)
    assert failure["prompt"] == "the prompt" and failure["error"].startswith("RuntimeError: Request error for 5 times")
    assert failure["where"] == ""
