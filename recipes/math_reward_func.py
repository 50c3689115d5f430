"""Math reward for ``--reward.remote_url recipes/math_reward_func.py``: 1 for a correct final answer, else 0.

The grading is OpenRLHF 0.11.2's own (``openrlhf.utils.grade_answer``: string
normalisation, then sympy equivalence); this file only decides *which* part of the
response is the final answer. DAPO-Math-17k prompts ask for a last line
``Answer: $Answer``, so that line wins; a ``\\boxed{...}`` answer is the fallback for
models that box instead.

The allocators need exactly this: a reward per rollout while rollouts are generated
(``reward_func`` runs inside the rollout actors), binary so a group's pass rate is a
count. OpenRLHF calls ``reward_func(queries, prompts, labels)`` with ``queries`` =
prompt + response as decoded text and reads ``rewards``, ``scores`` and ``extra_logs``.
"""

from __future__ import annotations

import re

import torch
from openrlhf.utils import extract_boxed_answer, grade_answer

# "Answer: 42", "**Answer:** $\frac{1}{2}$", "answer：7" (full-width colon); the last one counts.
_ANSWER_LINE = re.compile(r"^[ \t>*_]*answer[ \t*_]*[:\uff1a][ \t*_]*(?P<answer>.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def response_of(query: str, prompt: str) -> str:
    """The generated part of ``query``. The prompt itself often says 'Answer:' (DAPO's
    instructions do), so it must not be searched."""
    if prompt and query.startswith(prompt):
        return query[len(prompt) :]
    if prompt and prompt in query:  # special tokens decoded around the prompt
        return query.split(prompt, 1)[1]
    return query


def _strip_math_delimiters(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(answer) > len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
            return answer[len(left) : -len(right)].strip()
    return answer


def final_answer(response: str) -> str | None:
    """The last ``Answer:`` line's answer (boxed inside it unwrapped), else the last ``\\boxed{}``."""
    lines = [m.group("answer") for m in _ANSWER_LINE.finditer(response) if m.group("answer").strip()]
    if lines:
        answer = lines[-1]
        boxed = extract_boxed_answer(answer)
        return _strip_math_delimiters(boxed if boxed is not None else answer)
    return extract_boxed_answer(response)


def reward_func(queries: list[str], prompts: list[str], labels: list[str], **kwargs) -> dict:
    answers = [final_answer(response_of(q, p)) for q, p in zip(queries, prompts)]
    correct = [answer is not None and grade_answer(answer, str(label)) for answer, label in zip(answers, labels)]
    rewards = torch.tensor([float(c) for c in correct], dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {
            # Share of responses with no extractable answer: high early on, or when the
            # template/prompt does not ask for "Answer:" / \boxed{}.
            "math_answer_missing": torch.tensor([float(a is None) for a in answers], dtype=torch.float32),
        },
    }
