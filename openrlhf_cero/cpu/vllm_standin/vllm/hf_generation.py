"""One completion through transformers' ``generate``, with vLLM's sampling semantics.

vLLM samples from one engine-wide generator, so its outputs depend on how requests
were batched. Here every completion has its own seed (see ``request_seed`` and
``AsyncLLMEngine._seeds``) and runs alone, so a rollout is reproducible from (engine
seed, the weights, prompt, how often that prompt was seen since the weights were
loaded) whatever the interleaving of requests, and across a restart: stricter than
vLLM, which is what a CPU test wants.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from vllm.outputs import Logprob
from vllm.sampling_params import SamplingParams


def request_seed(*parts: object) -> int:
    """A stable 63-bit seed from the given parts (hashlib: no per-process salt)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter's name, dtype, shape and bytes: equal weights, equal key.

    About a second per GB on one core; the engine computes it once per weight update.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            tensor = param.detach().contiguous().reshape(-1)
            digest.update(f"{name}|{tensor.dtype}|{tuple(param.shape)}|".encode())
            digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None
    finish_reason: str


class _TokenBoundaryHook(StoppingCriteria):
    """Calls ``on_token`` between decoding steps (weight updates and pauses happen there)."""

    def __init__(self, on_token: Callable[[], None]):
        self._on_token = on_token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self._on_token()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _generation_config(params: SamplingParams, max_tokens: int, eos_ids: list[int], pad_id: int | None):
    stop_ids = [] if params.ignore_eos else list(eos_ids)
    stop_ids += [t for t in params.stop_token_ids or [] if t not in stop_ids]
    sampling = {}
    if not params.greedy:
        sampling = {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
    return GenerationConfig(
        max_new_tokens=max_tokens,
        # HF applies min_new_tokens by masking the EOS ids, as vLLM does.
        min_new_tokens=params.min_tokens if stop_ids and params.min_tokens else None,
        do_sample=not params.greedy,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=stop_ids or None,
        pad_token_id=pad_id if pad_id is not None else (eos_ids[0] if eos_ids else 0),
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        **sampling,
    ), set(stop_ids)


def _token_logprobs(step_logits: torch.Tensor, token_id: int, top_k: int) -> dict[int, Logprob]:
    """vLLM's per-position dict: the sampled token plus the ``top_k`` most likely ones."""
    logprobs = torch.log_softmax(step_logits.float(), dim=-1)
    chosen = logprobs[token_id]
    entries = {token_id: Logprob(logprob=chosen.item(), rank=int((logprobs > chosen).sum().item()) + 1)}
    if top_k > 0:
        values, indices = logprobs.topk(top_k)
        for rank, (value, index) in enumerate(zip(values.tolist(), indices.tolist()), start=1):
            entries.setdefault(index, Logprob(logprob=value, rank=rank))
    return entries


@torch.no_grad()
def generate_completion(
    model: torch.nn.Module,
    prompt_token_ids: list[int],
    params: SamplingParams,
    max_tokens: int,
    seed: int,
    eos_ids: list[int],
    pad_id: int | None,
    logprobs_mode: str,
    on_token: Callable[[], None],
) -> Completion:
    config, stop_ids = _generation_config(params, max_tokens, eos_ids, pad_id)
    input_ids = torch.tensor([prompt_token_ids], dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([_TokenBoundaryHook(on_token)]),
        )
    token_ids = out.sequences[0, len(prompt_token_ids) :].tolist()
    finish_reason = "stop" if token_ids and token_ids[-1] in stop_ids else "length"

    logprobs = cumulative = None
    if params.logprobs is not None:
        # raw: log-softmax of the model's logits; processed: after temperature/top-k/top-p.
        steps = out.logits if logprobs_mode == "raw_logprobs" else out.scores
        logprobs = [_token_logprobs(step[0], tok, params.logprobs) for step, tok in zip(steps, token_ids)]
        cumulative = sum(position[tok].logprob for position, tok in zip(logprobs, token_ids))
    return Completion(token_ids, logprobs, cumulative, finish_reason)
