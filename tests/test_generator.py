"""The allocating SamplesGenerator with OpenRLHF's real pieces around it.

Real: Ray, OpenRLHF's ``create_vllm_engines`` / ``RolloutRayActor`` (with its reward
function loading and single-turn executor), ``get_strategy``, ``get_tokenizer`` and
``prepare_datasets`` (the StatefulDataLoader of prompts). Stood in: the vLLM engine
inside the rollout actor (transformers generation, docs/cpu.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from openrlhf_cero import cpu
from openrlhf_cero.allocators import prompt_id
from openrlhf_cero.cpu.tiny import build, smoke_flags
from openrlhf_cero.openrlhf.flags import add_allocator_arguments, allocator_from_args
from openrlhf_cero.openrlhf.stock_main import parse_stock_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build(tmp_path_factory.mktemp("assets"), prompts=64, seed=1)


@pytest.fixture(scope="module")
def engines(assets, tmp_path_factory):
    cpu.install()
    import ray
    from openrlhf.trainer.ray import create_vllm_engines

    ray.init(**cpu.ray_init_kwargs())
    args = openrlhf_args(assets, tmp_path_factory.mktemp("work"))
    yield create_vllm_engines(
        1, 1, args.actor.model_name_or_path, args.train.seed, False, False, False, args.data.max_len,
        None, args.vllm.gpu_memory_utilization, False, None, remote_rm_url=args.reward.remote_url,
    )
    ray.shutdown()


def openrlhf_args(assets, work, *extra: str, **overrides):
    flags = smoke_flags(assets, work, **{"data.max_samples": 64, **overrides})
    return parse_stock_args([*flags, *extra], add_allocator_arguments)


def make_generator(assets, work, engines, *extra: str, **overrides):
    from openrlhf.trainer.ppo_trainer import prepare_datasets
    from openrlhf.utils import get_strategy
    from openrlhf.utils.utils import get_tokenizer

    from openrlhf_cero.openrlhf.checkpoint import AllocatorCheckpointingLoader
    from openrlhf_cero.openrlhf.generator import AllocatingSamplesGenerator

    args = openrlhf_args(assets, work, *extra, **overrides)
    strategy = get_strategy(args)
    tokenizer = get_tokenizer(args.actor.model_name_or_path, None, "left", strategy)
    loader, _, _ = prepare_datasets(strategy, tokenizer)
    allocator = allocator_from_args(args)
    loader = AllocatorCheckpointingLoader(loader, allocator)
    generator = AllocatingSamplesGenerator(
        strategy=strategy, prompts_dataloader=loader, eval_dataloader=None, tokenizer=tokenizer,
        vllm_engines=engines, allocator=allocator,
    )
    kwargs = dict(do_sample=True, max_len=args.data.max_len, max_new_tokens=args.rollout.max_new_tokens,
                  temperature=args.rollout.temperature, top_p=args.rollout.top_p)
    return generator, kwargs, args


def groups_of(batch):
    """Split a RolloutBatch into its groups, checking each group is one prompt."""
    groups, start = [], 0
    for size in batch.group_sizes:
        group = batch[start : start + size]
        assert len({(s.prompts[0], s.labels[0]) for s in group}) == 1, "a group mixes prompts"
        groups.append(group)
        start += size
    assert start == len(batch)
    return groups


def test_uniform_draws_n_per_prompt(assets, tmp_path, engines):
    generator, kwargs, args = make_generator(assets, tmp_path, engines, "--rollout_allocator", "uniform")
    batch, pass_rate, consumed, exhausted = generator.generate_samples(**kwargs)
    assert len(batch) == 16 and batch.group_sizes == [4, 4, 4, 4]
    assert consumed == 4 and not exhausted and pass_rate is None
    assert len({s.prompts[0] for s in batch}) == 4
    groups_of(batch)
    assert batch.metrics["allocator/rollouts_drawn"] == 16.0


def test_per_prompt_counts_and_second_round(assets, tmp_path, engines):
    generator, kwargs, _ = make_generator(
        assets, tmp_path, engines, "--rollout_allocator", "unequal_test", "--allocator.unequal_test.extra_round", "true"
    )
    batch, _, consumed, _ = generator.generate_samples(**kwargs)
    groups = groups_of(batch)
    assert [len(g) for g in groups] == [6, 2, 6, 2] and len(batch) == 16 and consumed == 4
    # The second round's rollouts join the first round's group of the same prompt.
    rewards = [float(s.rewards[0]) for s in batch]
    assert all(r in (0.0, 1.0) for r in rewards)


def test_skipped_prompts_and_refills_keep_the_step_total(assets, tmp_path, engines):
    """Pilot-Commit pilots a pool, skips out-of-band prompts and refills from the
    dataloader: prompts are pulled beyond the first batch, every trained group is
    pilot + commit of one prompt, and the step still trains batch * n samples."""
    generator, kwargs, _ = make_generator(
        assets, tmp_path, engines, "--rollout_allocator", "pilot_commit", "--rollout.n_samples_per_prompt", "8",
        "--allocator.pilot_commit.n_pilot", "4",
    )
    totals = []
    for _ in range(2):
        batch, _, consumed, _ = generator.generate_samples(**kwargs)
        groups = groups_of(batch)
        totals.append(len(batch))
        assert all(len(g) == 8 for g in groups)
        assert consumed > 4  # more prompts than rollout.batch_size were needed
        metrics = batch.metrics
        assert metrics["allocator/rollouts_trained"] == 32.0
        assert metrics["allocator/rollouts_drawn"] > 32.0  # pilots of skipped prompts count
        assert metrics["allocator/prompts_skipped"] > 0
    assert totals == [32, 32]


def test_dynamic_filtering_drops_and_replaces_groups(assets, tmp_path, engines):
    generator, kwargs, _ = make_generator(
        assets, tmp_path, engines, "--rollout_allocator", "uniform", "--algo.dynamic_filtering_enable",
        "--algo.dynamic_filtering_range", "0", "1",
    )
    batch, pass_rate, consumed, _ = generator.generate_samples(**kwargs)
    groups = groups_of(batch)
    assert len(batch) == 16 and len(groups) == 4
    assert all(0 < np.mean([float(s.scores[0]) for s in g]) < 1 for g in groups)
    filtered = batch.metrics["allocator/groups_filtered"]
    assert consumed == 4 + filtered and pass_rate == pytest.approx(16 / consumed * 100)  # OpenRLHF's formula


def test_checkpointed_loader_carries_the_allocator_state(assets, tmp_path, engines):
    generator, kwargs, _ = make_generator(assets, tmp_path, engines, "--rollout_allocator", "unequal_test")
    generator.generate_samples(**kwargs)
    state = generator.prompts_dataloader.state_dict()
    assert state["rollout_allocator"]["steps"] == 1 and state["_num_yielded"] == 4

    fresh, _, _ = make_generator(assets, tmp_path / "b", engines, "--rollout_allocator", "unequal_test")
    fresh.prompts_dataloader.load_state_dict(state)
    assert fresh.allocator.state_dict() == generator.allocator.state_dict()
    # The data position came back too: the next prompts are the ones after the first four.
    first = {prompt_id(s.prompts[0], s.labels[0]) for s in generator.generate_samples(**kwargs)[0]}
    second = {prompt_id(s.prompts[0], s.labels[0]) for s in fresh.generate_samples(**kwargs)[0]}
    assert first == second


def test_generate_batch_larger_than_train_batch_is_served_step_by_step(assets, tmp_path, engines):
    """--rollout.vllm_generate_batch_size 8 with batch 4: one generation call makes two
    whole steps; the second is served from the buffer without touching the data."""
    generator, kwargs, _ = make_generator(
        assets, tmp_path, engines, "--rollout_allocator", "unequal_test", "--train.async_enable",
        "--rollout.vllm_generate_batch_size", "8",
    )
    first, _, consumed_first, _ = generator.generate_samples(**kwargs)
    second, _, consumed_second, _ = generator.generate_samples(**kwargs)
    assert (consumed_first, consumed_second) == (8, 0)
    assert len(first) == len(second) == 16
    assert first.group_sizes == second.group_sizes == [6, 2, 6, 2]
    assert not {s.prompts[0] for s in first} & {s.prompts[0] for s in second}


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--rollout_allocator", "uniform"], 90),
        (["--rollout_allocator", "cero"], 90),  # CERO's default takes rollout.batch_size prompts a step
        (["--rollout_allocator", "cero", "--allocator.cero.prompt_oversample", "3"], 30),
        (["--rollout_allocator", "unequal_test"], 90),
        (["--rollout_allocator", "cero", "--allocator.cero.budget_mode", "global"], "run budget"),
    ],
)
def test_max_steps_follows_the_prompts_a_step_consumes(assets, tmp_path, engines, flags, expected):
    """OpenRLHF sizes the learning-rate schedule from max_steps. CERO offering 3x the prompts
    per step goes through an epoch in a third of the steps; in global budget mode max_steps
    is the optimizer steps its run budget pays for (uniform's spend over the run's steps
    by default, whatever max_steps said before)."""
    from types import SimpleNamespace

    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    from openrlhf_cero.openrlhf.generator import AllocatingSamplesGenerator
    from openrlhf_cero.openrlhf.trainers import _install_allocating_generator

    ours, _, args = make_generator(assets, tmp_path, engines, *flags)
    stock = SamplesGenerator(strategy=ours.strategy, prompts_dataloader=ours.prompts_dataloader.loader,
                             eval_dataloader=None, tokenizer=ours.tokenizer, vllm_engines=engines)
    trainer = SimpleNamespace(samples_generator=stock, prompts_dataloader=stock.prompts_dataloader, max_steps=90)
    _install_allocating_generator(trainer)
    if expected == "run budget":
        prompts, batch, n = len(stock.prompts_dataloader), args.rollout.batch_size, args.rollout.n_samples_per_prompt
        steps = -(-prompts // batch) * args.train.num_episodes
        expected = steps * batch * n // args.train.batch_size * args.train.max_epochs
        assert trainer.samples_generator.allocator.global_budget == steps * batch * n
    assert trainer.max_steps == expected
    assert isinstance(trainer.samples_generator, AllocatingSamplesGenerator)
    assert trainer.samples_generator.prompts_dataloader is trainer.prompts_dataloader


def test_pilot_commit_where_every_reward_is_1_trains_full_steps_with_a_warning(assets, tmp_path, engines, caplog):
    """The case of issue 11 through the real rollout actors: on data where every reward is
    1 no pilot is in the band, and the data ends within the step. The step used to come
    back empty (OpenRLHF then skips it, ends the episode and the run exits 0 after zero
    training steps); now it trains a full batch of fallback groups, says so in a warning
    and reports allocator/fallback_groups."""
    import json

    from openrlhf_cero.cpu.stand_in_reward import make_label, parse_pass_rate
    from openrlhf_cero.cpu.tiny import PROMPTS_FILE

    solved = tmp_path / "solved.jsonl"
    rows = [json.loads(line) for line in (assets / PROMPTS_FILE).read_text(encoding="utf-8").splitlines()[:16]]
    assert all(0.0 <= parse_pass_rate(row["label"]) <= 1.0 for row in rows)
    with open(solved, "w", encoding="utf-8") as f:
        for row in rows:  # pass rate 1: the stand-in reward gives every response 1
            f.write(json.dumps({"input": row["input"], "label": make_label(row["label"].split("|p=")[0], 1.0)}) + "\n")
    generator, kwargs, _ = make_generator(
        assets, tmp_path, engines, "--rollout_allocator", "pilot_commit", "--rollout.n_samples_per_prompt", "8",
        "--allocator.pilot_commit.n_pilot", "4", **{"data.prompt_dataset": solved, "data.max_samples": 16},
    )
    with caplog.at_level("WARNING", logger="openrlhf_cero.allocators.step_loop"):
        batch, _, consumed, exhausted = generator.generate_samples(**kwargs)
    assert consumed == 16 and exhausted  # the step's pilots took the whole epoch
    assert len(batch) == 32 and batch.group_sizes == [8, 8, 8, 8]  # a full step: rollout.batch_size x n
    groups_of(batch)
    assert all(float(s.rewards[0]) == 1.0 for s in batch)
    metrics = batch.metrics
    assert metrics["allocator/fallback_groups"] == 4.0 and metrics["allocator/rollouts_trained"] == 32.0
    assert metrics["allocator/pilot_pass"] == 0.0 and metrics["allocator/zero_variance_share"] == 1.0
    # every pilot drawn, plus 4 commit rollouts for each of the 4 fallback groups
    assert metrics["allocator/rollouts_drawn"] == metrics["allocator/pilot_rollouts"] + 4 * 4
    [record] = [r for r in caplog.records if r.name == "openrlhf_cero.allocators.step_loop"]
    assert "pilot_commit filled 0 of the 32 rollouts" in record.message and "fallback_groups" in record.message
