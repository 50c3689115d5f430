"""A CPU stand-in for the parts of vLLM that OpenRLHF 0.11.2 imports.

It is put on ``sys.path`` by :func:`openrlhf_cero.cpu.install` only when no real vLLM
is importable. Generation runs through transformers' ``generate`` on CPU, one request
at a time; weight sync uses a gloo process group. It mimics the API of vLLM 0.29.0 (the
version OpenRLHF 0.11.2 pins), nothing more: see docs/cpu.md for what it cannot catch.
"""

from vllm.engine import AsyncLLMEngine
from vllm.engine_args import AsyncEngineArgs
from vllm.outputs import CompletionOutput, Logprob, RequestOutput
from vllm.sampling_params import SamplingParams

# The vLLM API level mimicked; the local label marks it as the stand-in.
__version__ = "0.29.0+cpu.standin"
IS_CPU_STANDIN = True

__all__ = [
    "AsyncEngineArgs",
    "AsyncLLMEngine",
    "CompletionOutput",
    "Logprob",
    "RequestOutput",
    "SamplingParams",
]
