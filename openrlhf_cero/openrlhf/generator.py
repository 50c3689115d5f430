"""OpenRLHF's samples generator, drawing the allocator's count of rollouts per prompt.

A training step is one ``step_loop.run_step``: prompts come from OpenRLHF's prompt
dataloader, each cycle's rollouts are dispatched to the rollout engines with each
prompt's own count (engines balanced by those counts, not by prompts), rewards come
back with the responses (``--reward.remote_url``), and the allocator may extend,
skip, or ask for more prompts. Dynamic filtering is the step loop's ``accept``. The
step's samples leave as a :class:`RolloutBatch` that knows its groups.

Evaluation is untouched: ``generate_eval_samples`` keeps OpenRLHF's fixed
``eval.n_samples_per_prompt``.
"""

from __future__ import annotations

import heapq
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import ray
import torch
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator, _collect_prompt_batch
from openrlhf.trainer.ray.vllm_engine import batch_vllm_engine_call
from openrlhf.utils.logging_utils import init_logger
from vllm import SamplingParams

from openrlhf_cero.allocators import RolloutAllocator, prompt_ids
from openrlhf_cero.allocators.step_loop import StepOutcome, run_step
from openrlhf_cero.openrlhf.rollout_batch import RolloutBatch

logger = init_logger(__name__)

Prompt = Tuple[str, Any, Any]  # (prompt text, label, image or None)


class AllocatingSamplesGenerator(SamplesGenerator):
    def __init__(self, *args, allocator: RolloutAllocator, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.allocator = allocator
        self._dataloader_iter = None
        self._ready: List[RolloutBatch] = []  # whole steps made ahead (vllm_generate_batch_size > batch_size)
        # Prompts an allocator may hand back for a retry (Pilot-Commit's queue), by id.
        self._held: dict[int, Prompt] = {}
        self._fresh_taken = 0

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
        budget = args.rollout.batch_size * args.rollout.n_samples_per_prompt
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
        return results

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
