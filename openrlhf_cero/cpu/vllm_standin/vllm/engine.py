"""``AsyncLLMEngine`` stand-in: the methods OpenRLHF's ``RolloutRayActor`` calls.

Requests are generated one at a time on a dedicated thread (the Ray actor's event
loop stays free for ``get_num_unfinished_requests``, pauses and weight updates);
``collective_rpc`` runs the worker extension (OpenRLHF's ``WorkerWrap``) on a second
thread, between decoding steps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from vllm.cuda_as_cpu import CudaAsCpu
from vllm.engine_args import AsyncEngineArgs
from vllm.hf_generation import generate_completion, request_seed, weights_fingerprint
from vllm.model_access import ModelAccess
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.worker import ModelConfig, build_worker

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "half": torch.float16}
_SLEEP_TAGS = ("weights", "kv_cache")


class RequestCounter:
    """vLLM's ``output_processor``: OpenRLHF balances prompts across engines by it."""

    def __init__(self) -> None:
        self._unfinished: set[str] = set()

    def add(self, request_id: str) -> None:
        self._unfinished.add(request_id)

    def remove(self, request_id: str) -> None:
        self._unfinished.discard(request_id)

    def get_num_unfinished_requests(self) -> int:
        return len(self._unfinished)


def _resolve_dtype(dtype: str, config_dtype: torch.dtype | None) -> torch.dtype:
    if dtype == "auto":
        return config_dtype if isinstance(config_dtype, torch.dtype) else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported by the CPU stand-in; valid: 'auto', {sorted(_DTYPES)}")
    return _DTYPES[dtype]


class AsyncLLMEngine:
    def __init__(self, engine_args: AsyncEngineArgs):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.engine_args = engine_args
        hf_config = AutoConfig.from_pretrained(engine_args.model, trust_remote_code=engine_args.trust_remote_code)
        dtype = _resolve_dtype(engine_args.dtype, getattr(hf_config, "dtype", None))
        self._model = AutoModelForCausalLM.from_pretrained(
            engine_args.model,
            dtype=dtype,
            attn_implementation="sdpa",
            trust_remote_code=engine_args.trust_remote_code,
        ).eval()
        self._tokenizer = AutoTokenizer.from_pretrained(
            engine_args.tokenizer or engine_args.model, trust_remote_code=engine_args.trust_remote_code
        )
        max_model_len = engine_args.max_model_len or getattr(hf_config, "max_position_embeddings", 2048)
        self.model_config = ModelConfig(engine_args.model, dtype, max_model_len, engine_args.logprobs_mode)
        self._eos_ids = self._find_eos_ids()
        # Sampling seeds are keyed by the weights (their fingerprint, recomputed lazily after
        # a load) and by the visits of a prompt since the last load: see _seeds.
        self._seed_lock = threading.Lock()
        self._weights_key: str | None = None
        self._prompt_visits: Counter[str] = Counter()
        self._worker = build_worker(engine_args.worker_extension_cls, self._model, self.model_config)
        self._rekey_after_weight_loads(self._worker.model_runner.model)

        self.output_processor = RequestCounter()
        self._access = ModelAccess()
        self._generate_thread = ThreadPoolExecutor(1, thread_name_prefix="standin-generate")
        self._rpc_thread = ThreadPoolExecutor(1, thread_name_prefix="standin-rpc")
        self._asleep: set[str] = set()

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, **_: Any) -> "AsyncLLMEngine":
        return cls(engine_args)

    def _find_eos_ids(self) -> list[int]:
        eos = getattr(self._model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self._tokenizer.eos_token_id
        if eos is None:
            return []
        return [eos] if isinstance(eos, int) else list(eos)

    # --- generation ---------------------------------------------------------------------
    def _rekey_after_weight_loads(self, loader: Any) -> None:
        """Every ``load_weights`` (what ``WorkerWrap.update_weight`` ends with) starts a new
        sampling key: new weights, visits counted from 0."""
        load_weights = loader.load_weights

        def load_weights_and_rekey(weights):
            try:
                return load_weights(weights)
            finally:
                with self._seed_lock:
                    self._weights_key = None
                    self._prompt_visits.clear()

        loader.load_weights = load_weights_and_rekey

    def _seeds(self, prompt_token_ids: list[int], params: SamplingParams) -> list[int]:
        """One seed per sample: the request's seed when given, else a hash of (engine seed,
        fingerprint of the current weights, prompt tokens, visits of this prompt since the
        weights were last loaded).

        Everything in that key is restored by a resume: OpenRLHF broadcasts the checkpoint's
        weights to the engines before the first generation (``PPOTrainer.fit``), as the
        uninterrupted run did after that step, and both then start counting visits from 0.
        A process-lifetime visit counter would restart at 0 on a resume and draw other
        samples; the fingerprint keeps later steps (new weights) from reusing the random
        numbers of earlier ones.
        """
        if params.seed is not None:
            return [request_seed("request", params.seed, i) for i in range(params.n)]
        key = request_seed("prompt", tuple(prompt_token_ids))
        with self._seed_lock:
            if self._weights_key is None:
                self._weights_key = weights_fingerprint(self._model)
            first = self._prompt_visits[key]
            self._prompt_visits[key] += params.n
            weights = self._weights_key
        return [request_seed("engine", self.engine_args.seed, weights, key, first + i) for i in range(params.n)]

    def _max_tokens(self, prompt_len: int, params: SamplingParams) -> int:
        room = self.model_config.max_model_len - prompt_len
        if room < 1:
            raise ValueError(
                f"prompt of {prompt_len} tokens leaves no room to generate within max_model_len "
                f"{self.model_config.max_model_len} (--data.max_len)"
            )
        return min(params.max_tokens or room, room)

    def _run_completion(self, prompt_token_ids: list[int], params: SamplingParams, seed: int, max_tokens: int):
        self._access.token_boundary()
        try:
            return generate_completion(
                self._model,
                prompt_token_ids,
                params,
                max_tokens,
                seed,
                self._eos_ids,
                self._tokenizer.pad_token_id,
                self.model_config.logprobs_mode,
                on_token=self._access.token_boundary,
            )
        finally:
            self._access.generation_done()

    async def generate(
        self, prompt: dict, sampling_params: SamplingParams, request_id: str, **_: Any
    ) -> AsyncIterator[RequestOutput]:
        if self._asleep:
            raise RuntimeError(f"generate() called while the engine sleeps ({sorted(self._asleep)}); call wake_up()")
        if prompt.get("multi_modal_data"):
            raise NotImplementedError("the CPU stand-in for vLLM generates from text token ids only")
        prompt_token_ids = list(prompt["prompt_token_ids"])
        max_tokens = self._max_tokens(len(prompt_token_ids), sampling_params)
        seeds = self._seeds(prompt_token_ids, sampling_params)  # before any await: arrival order
        loop = asyncio.get_running_loop()
        self.output_processor.add(request_id)
        try:
            outputs = []
            for index, seed in enumerate(seeds):
                done = await loop.run_in_executor(
                    self._generate_thread,
                    self._run_completion,
                    prompt_token_ids,
                    sampling_params,
                    seed,
                    max_tokens,
                )
                text = self._tokenizer.decode(done.token_ids, skip_special_tokens=sampling_params.skip_special_tokens)
                stop_reason = done.token_ids[-1] if done.finish_reason == "stop" else None
                outputs.append(
                    CompletionOutput(
                        index=index,
                        text=text,
                        token_ids=done.token_ids,
                        cumulative_logprob=done.cumulative_logprob,
                        logprobs=done.logprobs,
                        finish_reason=done.finish_reason,
                        stop_reason=stop_reason,
                    )
                )
        finally:
            self.output_processor.remove(request_id)
        yield RequestOutput(request_id, None, prompt_token_ids, outputs, finished=True)

    # --- control ------------------------------------------------------------------------
    async def collective_rpc(
        self, method: str, timeout: float | None = None, args: tuple = (), kwargs: dict | None = None
    ) -> list[Any]:
        def call() -> Any:
            with self._access.exclusive(), CudaAsCpu():
                return getattr(self._worker, method)(*args, **(kwargs or {}))

        result = await asyncio.get_running_loop().run_in_executor(self._rpc_thread, call)
        return [result]

    async def pause_generation(self, mode: str = "keep", **_: Any) -> None:
        if mode != "keep":
            raise ValueError(f"pause_generation(mode={mode!r}): the CPU stand-in supports mode='keep' only")
        await asyncio.to_thread(self._access.pause)

    async def resume_generation(self) -> None:
        self._access.resume()

    async def is_paused(self) -> bool:
        return self._access.paused

    async def sleep(self, level: int = 1) -> None:
        # Nothing to free on CPU; the state is tracked so misuse (generating asleep) is caught.
        self._asleep.update(_SLEEP_TAGS)

    async def wake_up(self, tags: list[str] | None = None) -> None:
        unknown = set(tags or ()) - set(_SLEEP_TAGS)
        if unknown:
            raise ValueError(f"wake_up(tags={tags}): unknown tag(s) {sorted(unknown)}; valid: {list(_SLEEP_TAGS)}")
        self._asleep.difference_update(tags or _SLEEP_TAGS)

    async def is_sleeping(self) -> bool:
        return bool(self._asleep)

    async def reset_prefix_cache(self, **_: Any) -> bool:
        return True  # no prefix cache on CPU

    def shutdown(self) -> None:
        self._generate_thread.shutdown(wait=False)
        self._rpc_thread.shutdown(wait=False)
