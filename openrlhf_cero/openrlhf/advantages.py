"""Advantages for groups of any size.

OpenRLHF 0.11.2's ``RemoteExperienceMaker.compute_advantages_and_returns`` reshapes the
step's rewards to ``(-1, n_samples_per_prompt)``: with unequal groups it crashes, or
worse, silently mixes neighbouring groups. Here every statistic is a segment statistic
over each sample's group number; with equal groups the results equal the stock ones
(tests check 1e-6). Everything after the group baseline (length penalties, KL-shaped
per-token rewards, returns, the final whitening) is OpenRLHF's own code path, called
in the same order.
"""

from __future__ import annotations

import itertools
from typing import List

import torch
from openrlhf.models.utils import compute_reward
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties
from openrlhf.utils.logging_utils import init_logger

from openrlhf_cero.openrlhf.rollout_batch import group_index

logger = init_logger(__name__)

# Estimators whose advantage is the sample's own return, no critic (OpenRLHF 0.11.2).
RETURN_ESTIMATORS = ("reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo", "flash_reinforce")
# Estimators OpenRLHF whitens over the whole batch after shaping.
WHITENED_ESTIMATORS = ("gae", "reinforce", "reinforce_baseline")


def group_statistics(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample group size, group mean and unbiased group std (NaN for a group of one,
    as ``torch.std`` gives), by segment sums: O(N) for any mix of sizes."""
    num_groups = int(groups.max()) + 1 if groups.numel() else 0
    counts = torch.bincount(groups, minlength=num_groups).to(rewards.dtype)
    sums = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, groups, rewards)
    mean = (sums / counts)[groups]
    squares = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, groups, (rewards - mean) ** 2)
    std = (squares / (counts - 1)).sqrt()[groups]
    return counts[groups], mean, std


def shape_rewards(rewards: torch.Tensor, groups: torch.Tensor, estimator: str) -> torch.Tensor:
    """The group baseline of each estimator, as OpenRLHF defines it for equal groups."""
    if estimator not in ("rloo", "reinforce_baseline", "dr_grpo", "group_norm", "flash_reinforce"):
        return rewards
    if estimator == "flash_reinforce":
        return rewards - rewards.mean()
    size, mean, std = group_statistics(rewards, groups)
    if estimator == "rloo":
        return rewards - (mean * size - rewards) / (size - 1)
    if estimator == "group_norm":
        return (rewards - mean) / (std + 1e-9)
    return rewards - mean  # reinforce_baseline, dr_grpo


class VariableGroupExperienceMaker(RemoteExperienceMaker):
    """OpenRLHF's experience maker with group statistics that follow the step's real groups."""

    @classmethod
    def replacing(cls, stock: RemoteExperienceMaker) -> "VariableGroupExperienceMaker":
        """This class built from the parts of the trainer's own (stock) experience maker."""
        return cls(
            stock.actor_model_group,
            stock.critic_model_group,
            stock.reward_model_group,
            stock.initial_model_group,
            stock.kl_ctl,
            stock.strategy,
            stock.tokenizer,
        )

    @torch.no_grad()
    def make_experience_batch(self, rollout_samples) -> List[Experience]:
        # Sample positions are the ``index`` OpenRLHF's split_rollout_samples assigns.
        self._groups = group_index(rollout_samples, self.args.rollout.n_samples_per_prompt)
        return super().make_experience_batch(rollout_samples)

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences: List[Experience]) -> List[Experience]:
        args = self.strategy.args
        estimator = args.algo.advantage.estimator

        for experience in experiences:
            experience.rewards = experience.rewards.to(torch.promote_types(experience.rewards.dtype, torch.float32))
        apply_length_penalties(experiences, args)

        # Rewards in sample order, so the group numbers line up.
        exp_len = [len(experience.index) for experience in experiences]
        indices = torch.tensor(list(itertools.chain.from_iterable(experience.index for experience in experiences)))
        raw_rewards = torch.cat([experience.rewards for experience in experiences], dim=0)
        rewards = torch.empty_like(raw_rewards)
        rewards[indices] = raw_rewards
        groups = getattr(self, "_groups", None)
        if groups is None or groups.numel() != rewards.numel():
            groups = torch.arange(rewards.numel()) // args.rollout.n_samples_per_prompt

        sizes, _, stds = group_statistics(rewards, groups)
        if bool((sizes > 1).all()):
            for experience, group_std in zip(experiences, stds[indices].split(exp_len)):
                experience.info["group_reward_std"] = group_std

        shaped = shape_rewards(rewards, groups, estimator)[indices].split(exp_len)
        for experience, reward in zip(experiences, shaped):
            self._attach_returns(experience, reward, estimator)

        if estimator in WHITENED_ESTIMATORS:
            self._whiten_advantages(experiences)
        return experiences

    def _attach_returns(self, experience: Experience, reward: torch.Tensor, estimator: str) -> None:
        """Per-token rewards (KL-shaped), advantages and returns, as OpenRLHF computes them."""
        args = self.strategy.args
        reward = compute_reward(
            reward,
            self.kl_ctl.value,
            experience.kl,
            action_mask=experience.action_mask,
            reward_clip_range=args.reward.clip_range,
        )
        if estimator == "gae":
            experience.advantages, experience.returns = self.get_advantages_and_returns(
                experience.values, reward, experience.action_mask, args.algo.advantage.gamma, args.algo.advantage.lambd
            )
        elif estimator in RETURN_ESTIMATORS:
            if args.algo.advantage.gamma != 1.0 and estimator != "reinforce":
                logger.warning(f"gamma is set to 1.0 for {estimator}")
                args.algo.advantage.gamma = 1.0
            experience.returns = self.get_cumulative_returns(reward, experience.action_mask, args.algo.advantage.gamma)
            experience.advantages = experience.returns.clone()
        else:
            raise ValueError(f"unknown --algo.advantage.estimator {estimator!r}")
        experience.info["return"] = reward.sum(dim=-1)
        experience.kl = None

    def _whiten_advantages(self, experiences: List[Experience]) -> None:
        args = self.strategy.args
        advantages = torch.cat([exp.advantages.flatten() for exp in experiences], dim=0).float()
        masks = torch.cat([exp.action_mask.flatten() for exp in experiences], dim=0)
        num_actions = masks.sum()
        mean = (advantages * masks).sum() / num_actions
        if args.algo.advantage.no_std_norm:
            rstd = 1
        else:
            rstd = (((advantages - mean).pow(2) * masks).sum() / num_actions).clamp(min=1e-8).rsqrt()
        for exp in experiences:
            exp.advantages = (exp.advantages - mean) * rstd
