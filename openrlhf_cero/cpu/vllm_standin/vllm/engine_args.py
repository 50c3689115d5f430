"""Engine arguments as OpenRLHF's ``create_vllm_engines`` passes them.

GPU-only knobs (memory utilisation, CUDA graphs, prefix caching) are accepted and
recorded but have no effect on CPU; an argument that vLLM 0.29 does not know raises
``TypeError`` as it would there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class AsyncEngineArgs:
    model: str
    tokenizer: str | None = None
    seed: int = 0
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    worker_extension_cls: str = ""
    trust_remote_code: bool = False
    distributed_executor_backend: str | None = None
    enforce_eager: bool = False
    enable_prefix_caching: bool | None = None
    gpu_memory_utilization: float | None = 0.9
    enable_sleep_mode: bool = False
    logprobs_mode: str = "raw_logprobs"
    max_logprobs: int = 20
    limit_mm_per_prompt: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.tensor_parallel_size != 1:
            raise ValueError(
                f"the CPU stand-in for vLLM runs one process per engine: --vllm.tensor_parallel_size must be 1, "
                f"got {self.tensor_parallel_size}"
            )
        if self.logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise ValueError(
                f"logprobs_mode {self.logprobs_mode!r} is not supported by the CPU stand-in; "
                "valid: 'raw_logprobs', 'processed_logprobs'"
            )
