"""OpenRLHF's samples generator, drawing the allocator's count of rollouts per prompt.

A training step is one ``step_loop.run_step``: prompts come from OpenRLHF's prompt
dataloader, each cycle's rollouts are dispatched to the rollout engines with each
prompt's own count (engines balanced by those counts, not by prompts), rewards come
back with the responses (``--reward.remote_url``), and the allocator may extend,
skip, or ask for more prompts. Dynamic filtering is the step loop's ``accept``. The
step's samples leave as a :class:`RolloutBatch` that knows its groups.

Evaluation is untouched: ``generate_eval_samples`` keeps OpenRLHF's fixed
``eval.n_samples_per_prompt``.

Reward failures. OpenRLHF 0.11.2's rollout actor (``SingleTurnAgentExecutor.execute``)
catches whatever the ``reward_func`` of ``--reward.remote_url x.py`` (or the HTTP reward
client) raises, logs ``str(error)`` at INFO and returns the rollout with no reward. The
generator therefore wraps the actor's reward call once (:func:`_install_reward_probe`,
through Ray's ``__ray_call__``; the wrapper records the failure with its prompt and
re-raises, so OpenRLHF's handling is unchanged) and, when a rollout comes back without
a reward, stops the step with a :class:`RewardError` that names the reward function,
the exception and the prompt. Rewards the allocator rejects (NaN, outside [0, 1]) are
reported with the prompt's text, which the allocator never sees.
"""

from __future__ import annotations

import collections
import heapq
import traceback
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import ray
import torch
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator, _collect_prompt_batch
from openrlhf.trainer.ray.vllm_engine import batch_vllm_engine_call
from openrlhf.utils.logging_utils import init_logger
from vllm import SamplingParams

from openrlhf_cero.allocators import AllocatorError, RolloutAllocator, prompt_id, prompt_ids
from openrlhf_cero.allocators.step_loop import StepOutcome, run_step
from openrlhf_cero.openrlhf.rollout_batch import RolloutBatch

logger = init_logger(__name__)

Prompt = Tuple[str, Any, Any]  # (prompt text, label, image or None)

PROMPT_CHARS = 60  # characters of a prompt's text quoted in errors


class RewardError(RuntimeError):
    """A rollout came back from the rollout actors without a reward although rewards come at
    generation time (``--reward.remote_url`` or an agent): training cannot go on."""


class AllocatingSamplesGenerator(SamplesGenerator):
    def __init__(self, *args, allocator: RolloutAllocator, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.allocator = allocator
        self._dataloader_iter = None
        self._ready: List[RolloutBatch] = []  # whole steps made ahead (vllm_generate_batch_size > batch_size)
        # Prompts an allocator may hand back for a retry (Pilot-Commit's queue), by id.
        self._held: dict[int, Prompt] = {}
        self._fresh_taken = 0
        self._reward_probe: Optional[bool] = None  # rollout actors' reward calls wrapped (see _install_reward_probe)

    # ── one training step ──

    @torch.no_grad()
    def generate_samples(self, **generate_kwargs) -> Tuple[List, Optional[float], int, bool]:
        """Same return as OpenRLHF's: (samples, dynamic-filtering pass rate in %, prompts consumed, exhausted)."""
        if self._dataloader_iter is None and not self._ready:
            self._dataloader_iter = iter(self.prompts_dataloader)

        prompts_consumed, pass_rate = 0, None
        if not self._ready and self._dataloader_iter is not None:
            if self.args.vllm.enable_sleep:
                batch_vllm_engine_call(self.vllm_engines, "wake_up")
            try:
                steps_ahead = max(1, (self.args.rollout.vllm_generate_batch_size or 0) // self.args.rollout.batch_size)
                accepted = 0
                for _ in range(steps_ahead):
                    taken_before = self._fresh_taken
                    batch, outcome = self._allocate_step(**generate_kwargs)
                    prompts_consumed += self._fresh_taken - taken_before  # retries are not new data
                    accepted += outcome.rollouts_trained
                    if batch:
                        self._ready.append(batch)
                    if outcome.exhausted:
                        self._dataloader_iter = None
                        logger.info("Prompt dataloader is exhausted.")
                        break
            finally:
                if self.args.vllm.enable_sleep:
                    batch_vllm_engine_call(self.vllm_engines, "sleep")
            if self.args.algo.dynamic_filtering_enable and prompts_consumed:
                pass_rate = accepted / prompts_consumed * 100  # OpenRLHF's formula: samples kept per prompt, in %

        samples = self._ready.pop(0) if self._ready else RolloutBatch()
        exhausted = self._dataloader_iter is None and not self._ready
        return samples, pass_rate, prompts_consumed, exhausted

    def _allocate_step(self, **generate_kwargs) -> Tuple[RolloutBatch, StepOutcome]:
        args = self.args
        # The step's budget; an allocator that paces a run budget may spend up to its bound.
        budget = self.allocator.step_total_bound(args.rollout.batch_size * args.rollout.n_samples_per_prompt)
        accept = None
        if args.algo.dynamic_filtering_enable:
            low, high = args.algo.dynamic_filtering_range
            accept = lambda scores: low < float(np.mean(scores)) < high  # noqa: E731 (OpenRLHF's rule)

        outcome = run_step(
            self.allocator,
            budget,
            self._take_prompts,
            lambda prompts, counts: self._draw(prompts, counts, **generate_kwargs),
            accept=accept,
        )
        samples = [sample for group in outcome.groups for sample in group.samples]
        metrics = {f"allocator/{k}": v for k, v in self.allocator.metrics().items()}
        metrics["allocator/cycles"] = float(outcome.cycles)
        metrics["allocator/groups_filtered"] = float(outcome.groups_filtered)
        return RolloutBatch(samples, [len(g.samples) for g in outcome.groups], metrics), outcome

    def _take_prompts(self, count: int) -> Tuple[np.ndarray, List[Prompt]]:
        """Up to ``count`` prompts: first those the allocator hands back for a retry
        (optional hook ``requeue``), then fresh ones from OpenRLHF's dataloader."""
        retried = self._retried_prompts(count)
        prompts, labels, images, _ = _collect_prompt_batch(self._dataloader_iter, count - len(retried))
        self._fresh_taken += len(prompts)
        fresh = list(zip(prompts, labels, images))
        fresh_ids = prompt_ids(prompts, labels)
        observe = getattr(self.allocator, "observe_prompts", None)
        if observe is not None and prompts:
            observe(fresh_ids, prompts)  # allocators that predict from the prompt text (VIP)
        if hasattr(self.allocator, "requeue"):
            self._held.update(zip(fresh_ids.tolist(), fresh))
        ids = np.concatenate([np.array([pid for pid, _ in retried], dtype=np.uint64), fresh_ids])
        return ids, [prompt for _, prompt in retried] + fresh

    def _retried_prompts(self, count: int) -> List[Tuple[int, Prompt]]:
        requeue = getattr(self.allocator, "requeue", None)
        if requeue is None:
            return []
        # Keep only texts the allocator may still ask for. Ids whose text is gone (after a
        # resume) are skipped: those prompts come back with the dataloader's next epoch.
        queued = set(self.allocator.queued_ids().tolist())
        self._held = {pid: prompt for pid, prompt in self._held.items() if pid in queued}
        return [(pid, self._held[pid]) for pid in requeue(count).tolist() if pid in self._held]

    def _draw(self, prompts: Sequence[Prompt], counts: np.ndarray, **generate_kwargs):
        """Generate ``counts[i]`` rollouts of prompt i; return per prompt (samples, success scores)."""
        chosen = [i for i in range(len(prompts)) if counts[i] > 0]
        self._watch_reward_calls()
        refs = self._dispatch_prompts_to_vllm(
            [prompts[i][0] for i in chosen],
            [prompts[i][1] for i in chosen],
            images=[prompts[i][2] for i in chosen],
            counts=[int(counts[i]) for i in chosen],
            **generate_kwargs,
        )
        results: List[Tuple[list, Any]] = [([], np.zeros(0)) for _ in prompts]
        for i, responses in zip(chosen, ray.get(refs)):
            samples = [self._process_response_into_experience(r, **generate_kwargs) for r in responses]
            results[i] = (samples, _success_scores(samples))
        self._check_rewards(prompts, results)
        return results

    # ── reward failures, reported with the prompt ──

    def _reward_flags(self) -> Tuple[Any, Any]:
        """(``--reward.remote_url``, ``--train.agent_func_path``); None where absent."""
        remote_url = getattr(getattr(self.args, "reward", None), "remote_url", None)
        return remote_url, getattr(getattr(self.args, "train", None), "agent_func_path", None)

    def _rewards_at_generation(self) -> bool:
        return any(self._reward_flags())

    def _reward_source(self) -> str:
        urls, agent = self._reward_flags()
        if agent:
            return f"the agent {agent}"
        urls = [urls] if isinstance(urls, str) else list(urls or [])
        if urls and str(urls[0]).endswith(".py"):
            return f"the reward function {urls[0]}"
        return f"the reward server {','.join(map(str, urls))}"

    def _watch_reward_calls(self) -> None:
        """Wrap each rollout actor's reward call once, so that a failure is kept with its prompt."""
        if self._reward_probe is not None:
            return
        self._reward_probe = False
        remote_url, agent = self._reward_flags()
        if not remote_url or agent:
            return
        try:
            self._reward_probe = any(
                ray.get([engine.__ray_call__.remote(_install_reward_probe) for engine in self.vllm_engines])
            )
        except Exception as error:  # the run goes on; a failure is then reported without its exception
            logger.warning(f"cannot watch the rollout actors' reward calls: {type(error).__name__}: {error}")

    def _reward_failures(self) -> List[dict]:
        if not self._reward_probe:
            return []
        try:
            found = ray.get([engine.__ray_call__.remote(_take_reward_failures) for engine in self.vllm_engines])
        except Exception as error:
            logger.warning(f"cannot read the rollout actors' reward failures: {type(error).__name__}: {error}")
            return []
        return [failure for failures in found for failure in failures]

    def _check_rewards(self, prompts: Sequence[Prompt], results: List[Tuple[list, Any]]) -> None:
        """Stop on a rollout without a reward (rewards at generation time) and on rewards the
        allocator rejects, naming the prompt by id and by the start of its text."""
        if self._rewards_at_generation():
            missing = [i for i, (samples, _) in enumerate(results) for s in samples if s.rewards is None]
            if missing:
                total = sum(len(samples) for samples, _ in results)
                raise self._missing_reward_error([prompts[i] for i in missing], len(missing), total)
        drawn = [i for i, (samples, scores) in enumerate(results) if samples and scores is not None]
        if not drawn:
            return
        try:
            # The allocator's own check (NaN; outside [0, 1] unless --allocator.reward_threshold),
            # on all prompts at once; ids only name prompts in its message, which is rebuilt below.
            self.allocator.to_scores(np.zeros(len(drawn), dtype=np.uint64), [results[i][1] for i in drawn])
            return
        except AllocatorError as batch_error:
            error = batch_error
        for i in drawn:  # only after a failure: find the first faulty prompt
            text, label, _ = prompts[i]
            pid = prompt_id(text, label)
            try:
                self.allocator.to_scores(np.array([pid], dtype=np.uint64), [results[i][1]])
            except AllocatorError as prompt_error:
                raise AllocatorError(
                    f"{prompt_error} (prompt text: {_quote(text)}; rewards from {self._reward_source()})"
                ) from None
        raise error

    def _missing_reward_error(self, missing: Sequence[Prompt], count: int, total: int) -> RewardError:
        source = self._reward_source()
        tally = f"{count} of {total} rollouts of this round came back without a reward"
        failures = self._reward_failures()
        asked = {(str(text), str(label)) for text, label, _ in missing}
        failure = next((f for f in failures if (f["prompt"], f["label"]) in asked), None)
        if failure is None:
            text, label, _ = missing[0]
            hint = (
                "its executor must return a 'reward' for every rollout" if self._reward_flags()[1] else
                "OpenRLHF's rollout actor catches reward errors and logs them only at INFO level: look for "
                "'[SingleTurnExecutor] Failed to fetch reward from remote RM' in the rollout actors' output"
            )
            pid = prompt_id(text, label)
            return RewardError(f"{source} gave no reward for prompt {pid} {_quote(text)}; {tally}; {hint}")
        if failure.get("traceback"):
            logger.error(f"{source} failed in a rollout actor:\n{failure['traceback']}")
        pid = prompt_id(failure["prompt"], failure["label"])
        where = f" (at {failure['where']})" if failure.get("where") else ""
        if failure.get("error"):
            what = f"failed on prompt {pid} {_quote(failure['prompt'])}: {failure['error']}{where}"
        else:
            what = (
                f"returned {failure['returned']} for prompt {pid} {_quote(failure['prompt'])}, "
                "not a dict with a 'rewards' entry"
            )
        return RewardError(
            f"{source} {what}; {tally}. OpenRLHF's rollout actor catches reward errors, logs them only at INFO "
            "level and leaves the reward empty; training cannot go on without rewards"
        )

    # ── dispatch with one count per prompt ──

    def _dispatch_prompts_to_vllm(
        self, prompts: List[str], labels: List[str], *, images: List = None, counts: List[int] = None, **generate_kwargs
    ) -> List:
        """OpenRLHF's dispatch with per-prompt ``counts``; without counts (evaluation) every
        prompt gets ``n_samples_per_prompt`` as in OpenRLHF. Engines are balanced by the
        rollouts they will generate, largest requests first."""
        sampling_params = SamplingParams(
            temperature=generate_kwargs.get("temperature", 1.0),
            top_p=generate_kwargs.get("top_p", 1.0),
            top_k=generate_kwargs.get("top_k", -1),
            max_tokens=generate_kwargs.get("max_new_tokens"),
            min_tokens=generate_kwargs.get("min_new_tokens", 1),
            skip_special_tokens=generate_kwargs.get("skip_special_tokens", False),
            logprobs=1 if self.args.algo.advantage.is_correction_level != "off" else None,
        )
        if counts is None:
            counts = [generate_kwargs.get("n_samples_per_prompt", self.args.rollout.n_samples_per_prompt)] * len(prompts)
        if images is None:
            images = [None] * len(prompts)

        pending = ray.get([engine.get_num_unfinished_requests.remote() for engine in self.vllm_engines])
        engine_of = assign_engines(counts, pending)
        return [
            self.vllm_engines[engine_of[i]].generate_responses.remote(
                prompt=prompt,
                label=label,
                sampling_params=sampling_params,
                max_length=generate_kwargs.get("max_len", 2048),
                hf_tokenizer=self.tokenizer,
                num_samples=count,
                images=image,
            )
            for i, (prompt, label, image, count) in enumerate(zip(prompts, labels, images, counts))
        ]


def assign_engines(counts: Sequence[int], pending: Sequence[int]) -> List[int]:
    """Engine for each request: the least loaded one, placing large requests first
    (longest-processing-time rule), so engines end with near-equal rollout counts."""
    heap = [(load, engine) for engine, load in enumerate(pending)]
    heapq.heapify(heap)
    engine_of = [0] * len(counts)
    for i in sorted(range(len(counts)), key=lambda i: -counts[i]):
        load, engine = heapq.heappop(heap)
        engine_of[i] = engine
        heapq.heappush(heap, (load + counts[i], engine))
    return engine_of


def _quote(text: Any, chars: int = PROMPT_CHARS) -> str:
    """The first ``chars`` characters of a prompt, quoted (``...`` when cut)."""
    text = str(text)
    return repr(text[:chars]) + ("..." if len(text) > chars else "")


# ── inside the rollout actors (Ray's ``__ray_call__``): keep reward failures with their prompt ──

_FAILURES = "_openrlhf_cero_reward_failures"
_FAILURES_KEPT = 64


def _install_reward_probe(actor: Any) -> bool:
    """Wrap the reward calls of ``actor.executor`` (OpenRLHF's ``SingleTurnAgentExecutor``) so
    that each failure (an exception, or a result without ``rewards``) is kept with its prompt;
    exceptions are re-raised and results returned unchanged, so OpenRLHF handles them as
    before. Idempotent; False when the executor calls no reward endpoint."""
    executor = getattr(actor, "executor", None)
    endpoints = getattr(executor, "reward_endpoints", None)
    if not endpoints:
        return False
    if getattr(executor, _FAILURES, None) is not None:
        return True
    failures: collections.deque = collections.deque(maxlen=_FAILURES_KEPT)
    for name in ("_fetch_rewards_via_func", "_fetch_rewards_via_http"):
        fetch = getattr(executor, name, None)
        if fetch is not None:
            setattr(executor, name, _recording(fetch, failures, str(endpoints[0])))
    setattr(executor, _FAILURES, failures)
    return True


def _take_reward_failures(actor: Any) -> List[dict]:
    """The failures kept since the last call (and forget them)."""
    failures = getattr(getattr(actor, "executor", None), _FAILURES, None)
    taken = []
    while failures:  # popleft is atomic: safe while the actor's event loop appends
        taken.append(failures.popleft())
    return taken


def _recording(fetch, failures: collections.deque, reward_file: str):
    async def fetch_and_record(queries, prompts, labels):
        about = {"prompt": str(prompts[0]) if prompts else "", "label": str(labels[0]) if labels else ""}
        try:
            result = await fetch(queries, prompts, labels)
        except Exception as error:
            stack = traceback.extract_tb(error.__traceback__)
            ours = [i for i, frame in enumerate(stack) if frame.filename == reward_file]
            if ours:  # from the reward file's first frame on (not OpenRLHF's and asyncio's)
                lines = ["Traceback (most recent call last):\n", *traceback.format_list(stack[ours[0]:])]
                lines += traceback.format_exception_only(error)
            else:
                lines = traceback.format_exception(error)
            last = stack[ours[-1]] if ours else None
            failures.append({
                **about,
                "error": f"{type(error).__name__}: {str(error)[:500]}",
                "where": f"{last.filename} line {last.lineno}, in {last.name}" if last else "",
                "traceback": "".join(lines)[-4000:],
            })
            raise
        first = result[0] if result else None
        if not isinstance(first, dict) or first.get("rewards") is None:
            failures.append({**about, "returned": repr(first)[:200]})
        return result

    return fetch_and_record


def _success_scores(samples: list) -> Optional[np.ndarray]:
    """The allocator's outcome signal: OpenRLHF's ``scores`` (the reward function's success
    score, as dynamic filtering uses), else the reward; None when rewards come later."""
    values = []
    for sample in samples:
        value = sample.scores if sample.scores is not None else sample.rewards
        if value is None:
            return None
        values.append(float(value.reshape(-1)[0]))
    return np.asarray(values, dtype=np.float64)
