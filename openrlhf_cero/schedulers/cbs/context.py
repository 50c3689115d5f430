"""The context vector of a rollout: what the scorer sees when it predicts the gain.

A rollout is described by the numbers that plausibly decide how much training on it
changes the policy-gradient surrogate (docs/cbs.md): its advantage and how much of that
advantage is noise, its group (size, mean, spread), its length, how old it is and how
often it was trained already, and how hard its prompt looks. Everything is computed for
all rows at once with numpy (no per-rollout Python), as raw values; the scorer
standardises the columns with statistics of its replay, so the MLP's inputs are
well-conditioned whatever the reward scale.

A rollout's record (``ROLLOUT_FIELDS``) holds what does not change after it was drawn;
the context adds what does (age, times trained, the prompt's posterior now).
"""

from __future__ import annotations

import numpy as np

from openrlhf_cero.schedulers.base import RolloutTable

# The record kept per rollout, fresh or buffered (buffer.py stores these columns).
ROLLOUT_FIELDS: dict[str, type] = {
    "id": np.int64,
    "prompt_id": np.uint64,
    "group_uid": np.int64,  # unique over the run: groups of different steps never mix
    "reward": np.float64,
    "advantage": np.float64,
    "group_n": np.float64,
    "group_mean": np.float64,
    "group_std": np.float64,
    "adv_noise": np.float64,  # standard error of the group baseline, in advantage units
    "length": np.float64,
    "step_drawn": np.int64,
    "times_trained": np.int64,
}

CONTEXT_COLUMNS = (
    "reward",
    "advantage",
    "abs_advantage",
    "log_group_size",
    "group_mean",
    "group_std",
    "advantage_noise",
    "log_relative_length",
    "age",
    "times_trained",
    "prompt_posterior_mean",
    "prompt_posterior_var",
    "is_reused",
)
CONTEXT_DIM = len(CONTEXT_COLUMNS)


def dense_groups(group: np.ndarray) -> np.ndarray:
    """Group numbers 0..G-1 from a non-decreasing group column (rows of a group contiguous)."""
    if not group.size:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(np.diff(group) != 0)]).astype(np.int64)


def fresh_records(fresh: RolloutTable, first_id: int, first_group_uid: int, step: int) -> dict[str, np.ndarray]:
    """The records of a step's fresh rollouts, with their group statistics.

    The advantage noise is the standard error of the group's baseline, std/sqrt(n), in
    the units of the advantage: the estimators differ by a per-group scale (group_norm
    divides by the std, RLOO multiplies by n/(n-1), Dr. GRPO does neither), so the scale
    is measured per group as sum|advantage| / sum|reward - mean| (1 where the group has
    no spread). A rollout whose |advantage| is within this noise has a sign the baseline
    alone could have flipped.
    """
    n = len(fresh)
    local = dense_groups(np.asarray(fresh.group))
    reward = np.asarray(fresh.reward, dtype=np.float64)
    advantage = np.asarray(fresh.advantage, dtype=np.float64)
    groups = int(local[-1]) + 1 if n else 0
    size = np.bincount(local, minlength=groups).astype(np.float64)
    mean = np.bincount(local, weights=reward, minlength=groups) / np.maximum(size, 1.0)
    centred = reward - mean[local]
    std = np.sqrt(np.bincount(local, weights=centred * centred, minlength=groups) / np.maximum(size, 1.0))
    spread = np.bincount(local, weights=np.abs(centred), minlength=groups)
    moved = np.bincount(local, weights=np.abs(advantage), minlength=groups)
    scale = np.where(spread > 1e-12, moved / np.where(spread > 1e-12, spread, 1.0), 1.0)
    noise = scale * std / np.sqrt(np.maximum(size, 1.0))
    return {
        "id": first_id + np.arange(n, dtype=np.int64),
        "prompt_id": np.asarray(fresh.prompt_id, dtype=np.uint64),
        "group_uid": first_group_uid + local,
        "reward": reward,
        "advantage": advantage,
        "group_n": size[local],
        "group_mean": mean[local],
        "group_std": std[local],
        "adv_noise": noise[local],
        "length": np.asarray(fresh.length, dtype=np.float64),
        "step_drawn": np.full(n, step, dtype=np.int64),
        "times_trained": np.zeros(n, dtype=np.int64),
    }


def context_matrix(
    records: dict[str, np.ndarray], step: int, length_mean: float, post_mean: np.ndarray, post_var: np.ndarray
) -> np.ndarray:
    """Raw context, one row per record, columns ``CONTEXT_COLUMNS`` (float32 for the MLP)."""
    n = records["id"].size
    out = np.empty((n, CONTEXT_DIM), dtype=np.float32)
    age = (step - records["step_drawn"]).astype(np.float64)
    out[:, 0] = records["reward"]
    out[:, 1] = records["advantage"]
    out[:, 2] = np.abs(records["advantage"])
    out[:, 3] = np.log(records["group_n"])
    out[:, 4] = records["group_mean"]
    out[:, 5] = records["group_std"]
    out[:, 6] = records["adv_noise"]
    out[:, 7] = np.log(np.maximum(records["length"], 1e-6) / max(length_mean, 1e-6))
    out[:, 8] = age
    out[:, 9] = records["times_trained"]
    out[:, 10] = post_mean
    out[:, 11] = post_var
    out[:, 12] = age > 0
    return out


def reliability(advantage: np.ndarray, noise: np.ndarray, z: float) -> np.ndarray:
    """Share of a rollout's advantage that is signal rather than baseline noise, in [0, 1].

    The measured gain uses the advantage as computed, baseline error included, so the
    scorer learns to trust it as it is. Treating the observed advantage a as a noisy
    reading of the true one with error sd z*s (s = the baseline's standard error) and
    plugging a^2 in for the signal variance gives the Wiener shrinkage
    a^2 / (a^2 + (z s)^2): 0 for a zero advantage, near 1 once |a| is well outside
    the noise. docs/cbs.md, "Noise-aware intra-group selection".
    """
    a2 = advantage * advantage
    n2 = (z * noise) ** 2
    total = a2 + n2
    return np.where(total > 0, a2 / np.where(total > 0, total, 1.0), 0.0)
