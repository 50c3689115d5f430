"""Variable-group advantages against OpenRLHF 0.11.2's own RemoteExperienceMaker.

With equal groups our computation must equal the stock one (1e-6); with unequal groups
it must equal the stock computation run on each group alone (a per-group reference),
and neither may depend on the order in which samples sit in the micro-batches.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

from openrlhf_cero.openrlhf.advantages import VariableGroupExperienceMaker, group_statistics
from openrlhf_cero.openrlhf.rollout_batch import RolloutBatch, group_index
from openrlhf_cero.openrlhf.stock_main import parse_stock_args

ESTIMATORS = ["group_norm", "rloo", "reinforce_baseline", "dr_grpo"]


def openrlhf_args(estimator: str, n: int):
    return parse_stock_args(
        ["--algo.advantage.estimator", estimator, "--rollout.n_samples_per_prompt", str(n), "--reward.remote_url", "r.py"]
    )


def make_maker(cls, args, kl_coef=0.01):
    strategy = type("Strategy", (), {"args": args})()
    return cls(None, None, None, None, FixedKLController(kl_coef), strategy, tokenizer=None)


def random_samples(num: int, seed: int, binary: bool = True) -> list[Experience]:
    """Single-sample experiences as OpenRLHF's generator makes them (rewards, kl, masks)."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num):
        length = int(torch.randint(3, 12, (1,), generator=gen))
        mask = torch.zeros(1, 12, dtype=torch.bool)
        mask[0, :length] = True
        reward = torch.randint(0, 2, (1,), generator=gen).float() if binary else torch.rand(1, generator=gen)
        samples.append(
            Experience(
                action_mask=mask,
                kl=torch.randn(1, 12, generator=gen) * 0.05 * mask,
                rewards=reward,
                response_length=torch.tensor([float(length)]),
                total_length=torch.tensor([float(length + 5)]),
                info={"reward": reward.clone()},
            )
        )
    return samples


def micro_batches(samples: list[Experience], micro: int, shuffle_seed: int | None = None) -> list[Experience]:
    """Concatenate samples into micro-batches, each sample keeping its position as ``index``
    (OpenRLHF's split_rollout_samples); a shuffle mimics dynamic batching's reordering."""
    order = list(range(len(samples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    batches = []
    for start in range(0, len(order), micro):
        chunk = order[start : start + micro]
        for i in chunk:
            samples[i].index = [i]
        batches.append(Experience.concat_experiences([samples[i] for i in chunk], pad_token_id=0))
    return batches


def per_sample(experiences: list[Experience], attr: str) -> dict[int, torch.Tensor]:
    out = {}
    for exp in experiences:
        values = getattr(exp, attr) if attr in ("advantages", "returns") else exp.info[attr]
        for row, i in enumerate(exp.index):
            out[i] = values[row]
    return out


def assert_same(ours: list[Experience], ref: list[Experience], keys=("advantages", "returns", "return", "group_reward_std")):
    for key in keys:
        a, b = per_sample(ours, key), per_sample(ref, key)
        assert a.keys() == b.keys()
        for i in a:
            torch.testing.assert_close(a[i].float(), b[i].float(), atol=1e-6, rtol=1e-6, msg=f"{key} of sample {i}")


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_groups_match_stock(estimator, seed):
    n, prompts = 4, 6
    args = openrlhf_args(estimator, n)
    samples = random_samples(n * prompts, seed, binary=seed != 2)
    batches = micro_batches(samples, micro=5)
    stock = make_maker(RemoteExperienceMaker, args).compute_advantages_and_returns(copy.deepcopy(batches))
    ours_maker = make_maker(VariableGroupExperienceMaker, args)
    ours_maker._groups = group_index(RolloutBatch(samples, [n] * prompts), n)
    ours = ours_maker.compute_advantages_and_returns(copy.deepcopy(batches))
    assert_same(ours, stock)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_equal_groups_shuffled_order_match_stock(estimator):
    """Samples scattered across micro-batches (as dynamic batching does) keep their groups."""
    n, prompts = 8, 5
    args = openrlhf_args(estimator, n)
    samples = random_samples(n * prompts, seed=7)
    batches = micro_batches(samples, micro=3, shuffle_seed=11)
    stock = make_maker(RemoteExperienceMaker, args).compute_advantages_and_returns(copy.deepcopy(batches))
    ours = make_maker(VariableGroupExperienceMaker, args).compute_advantages_and_returns(copy.deepcopy(batches))
    assert_same(ours, stock)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("shuffle_seed", [None, 3])
def test_unequal_groups_match_stock_per_group(estimator, shuffle_seed):
    """Each group's values equal OpenRLHF's computation on that group alone (n = its size).
    reinforce_baseline whitens over the whole batch, so there the per-group reference is
    the pre-whitening return, and the whitening is checked on its own."""
    sizes = [4, 2, 6, 3, 2, 7]
    samples = random_samples(sum(sizes), seed=5)
    ours_maker = make_maker(VariableGroupExperienceMaker, openrlhf_args(estimator, 4))
    batch = RolloutBatch(samples, sizes)
    ours_maker._groups = group_index(batch, 4)
    ours = ours_maker.compute_advantages_and_returns(copy.deepcopy(micro_batches(samples, 4, shuffle_seed)))

    start = 0
    for size in sizes:
        group = copy.deepcopy(samples[start : start + size])
        ref = make_maker(RemoteExperienceMaker, openrlhf_args(estimator, size)).compute_advantages_and_returns(
            micro_batches(group, micro=size)
        )
        keys = ("return", "group_reward_std") if estimator == "reinforce_baseline" else None
        ours_group = {i: v for i, v in per_sample(ours, "return").items() if start <= i < start + size}
        for i, value in per_sample(ref, "return").items():
            torch.testing.assert_close(ours_group[start + i], value, atol=1e-6, rtol=1e-6)
        if keys is None:
            for key in ("advantages", "returns", "group_reward_std"):
                got = per_sample(ours, key)
                for i, value in per_sample(ref, key).items():
                    torch.testing.assert_close(got[start + i].float(), value.float(), atol=1e-6, rtol=1e-6)
        start += size

    if estimator == "reinforce_baseline":
        advantages = torch.cat([e.advantages.flatten() for e in ours])
        masks = torch.cat([e.action_mask.flatten() for e in ours]).float()
        mean = (advantages * masks).sum() / masks.sum()
        var = ((advantages - mean) ** 2 * masks).sum() / masks.sum()
        assert abs(mean.item()) < 1e-5 and abs(var.item() - 1) < 1e-4


def test_unequal_groups_never_mix_neighbours():
    """The failure OpenRLHF's reshape would cause: sizes [4, 2, 6] with n=4 mix groups 2 and 3."""
    rewards = torch.tensor([1.0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1])
    groups = group_index(RolloutBatch(range(12), [4, 2, 6]), 4)
    _, mean, std = group_statistics(rewards, groups)
    assert mean.tolist() == [1.0] * 4 + [0.0] * 2 + [1.0] * 6
    assert std.tolist() == [0.0] * 12


def test_group_index_of_plain_list_is_openrlhfs_equal_groups():
    assert group_index(list(range(6)), 3).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="n_samples_per_prompt=4"):
        group_index(list(range(6)), 4)


def test_rollout_batch_survives_pickling_with_groups():
    import pickle

    batch = pickle.loads(pickle.dumps(RolloutBatch([1, 2, 3], [2, 1], {"allocator/x": 1.0})))
    assert list(batch) == [1, 2, 3] and batch.group_sizes == [2, 1] and batch.metrics == {"allocator/x": 1.0}
