"""Tiny, network-free assets for running the real trainer on CPU, and the flags to run it.

``python -m openrlhf_cero.cpu.tiny OUT_DIR [--prompts N] [--seed S]`` writes:

* ``OUT_DIR/model``: a random ``LlamaConfig`` model (hidden 64, 2 layers) and a
  byte-level BPE tokenizer (vocab 320) trained locally with ``tokenizers``;
* ``OUT_DIR/prompts.jsonl``: math-like questions, fields ``input`` and ``label``;
  each label carries a latent pass rate drawn from Beta(0.35, 0.68), the fit of
  initial pass rates of Qwen2.5-Math-1.5B on DeepScaleR prompts (docs/sources.md section 3);
* ``OUT_DIR/reward_func.py``: the STAND-IN reward of :mod:`.stand_in_reward` for
  ``--reward.remote_url`` (a hash of the response text against that pass rate).

The same seed gives byte-identical files. :func:`smoke_flags` returns the
``train_ppo_ray`` flags of the measured 2-step GRPO smoke run (docs/cpu.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from openrlhf_cero.cpu import stand_in_reward

MODEL_DIR = "model"
PROMPTS_FILE = "prompts.jsonl"
REWARD_FILE = "reward_func.py"

VOCAB_SIZE = 320
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
# Beta(a, b) of initial per-prompt pass rates (docs/sources.md section 3).
PASS_RATE_BETA = (0.35, 0.68)


def _questions(count: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    ops = {"+": np.add, "-": np.subtract, "*": np.multiply}
    symbols = list(ops)
    out = []
    for _ in range(count):
        a, b = (int(x) for x in rng.integers(2, 100, size=2))
        op = symbols[int(rng.integers(len(symbols)))]
        out.append((f"Question: What is {a} {op} {b}?\nAnswer:", str(int(ops[op](a, b)))))
    return out


def _train_tokenizer(corpus: Iterable[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def _random_model(tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def build(out_dir: str | Path, prompts: int = 64, seed: int = 0) -> Path:
    """Write model, tokenizer, prompts and reward file under ``out_dir``; returns it."""
    if prompts < 1:
        raise ValueError(f"--prompts must be >= 1, got {prompts}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    questions = _questions(prompts, rng)
    pass_rates = rng.beta(*PASS_RATE_BETA, size=prompts)

    with open(out / PROMPTS_FILE, "w", encoding="utf-8") as f:
        for (question, answer), p in zip(questions, pass_rates):
            row = {"input": question, "label": stand_in_reward.make_label(answer, float(p))}
            f.write(json.dumps(row) + "\n")

    corpus = [q + " " + a for q, a in questions] * 4 + [str(n) for n in range(10000)]
    tokenizer = _train_tokenizer(corpus)
    model = _random_model(tokenizer, seed)
    tokenizer.save_pretrained(out / MODEL_DIR)
    model.save_pretrained(out / MODEL_DIR)
    shutil.copyfile(stand_in_reward.__file__, out / REWARD_FILE)
    return out


def _flag_name(key: str) -> str:
    """``"rollout.n_samples_per_prompt"`` or ``rollout__n_samples_per_prompt`` -> the dotted flag."""
    return "--" + key.removeprefix("--").replace("__", ".")


def smoke_flags(assets_dir: str | Path, work_dir: str | Path, **overrides: object) -> list[str]:
    """``train_ppo_ray`` flags for 2 GRPO steps of the tiny model on CPU (see docs/cpu.md).

    ``overrides`` replace or add flags: keys are dotted flag names (pass them as
    ``**{"train.async_enable": True}``) or use ``__`` for the dots
    (``rollout__n_samples_per_prompt=8``). ``True`` gives a bare switch, ``False`` or
    ``None`` removes the flag, a list or tuple gives several values.
    """
    assets, work = Path(assets_dir), Path(work_dir)
    flags: dict[str, object] = {
        "actor.model_name_or_path": assets / MODEL_DIR,
        "reward.remote_url": assets / REWARD_FILE,
        "data.prompt_dataset": assets / PROMPTS_FILE,
        "data.input_key": "input",
        "data.label_key": "label",
        "data.max_samples": 8,  # 8 prompts / rollout.batch_size 4 = 2 steps
        "data.max_len": 64,
        "rollout.max_new_tokens": 16,
        "rollout.batch_size": 4,
        "rollout.micro_batch_size": 8,
        "rollout.n_samples_per_prompt": 4,
        "rollout.temperature": 1.0,
        "train.batch_size": 16,
        "train.micro_batch_size": 8,
        "train.num_episodes": 1,
        "train.max_epochs": 1,
        "train.seed": 42,
        "algo.advantage.estimator": "group_norm",
        "actor.num_nodes": 1,
        "actor.num_gpus_per_node": 1,
        "ref.num_nodes": 1,
        "ref.num_gpus_per_node": 1,
        "vllm.num_engines": 1,
        "vllm.tensor_parallel_size": 1,
        "vllm.sync_backend": "gloo",  # no NCCL on CPU; also avoids the CUDA-IPC path
        "ds.zero_stage": 2,
        "ds.attn_implementation": "sdpa",  # flash_attention_2 needs CUDA
        "actor.adam.lr": 1e-4,
        "ckpt.path": work / "ckpt",
        "ckpt.save_steps": 1,
        "ckpt.output_dir": work / "final",
        "logger.logging_steps": 1,
    }
    for key, value in overrides.items():
        flags[_flag_name(key).removeprefix("--")] = value

    argv: list[str] = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        argv.append(_flag_name(key))
        if value is True:
            continue
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build tiny offline assets for CPU smoke runs.")
    parser.add_argument("out_dir")
    parser.add_argument("--prompts", type=int, default=64, help="number of prompts in prompts.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = build(args.out_dir, prompts=args.prompts, seed=args.seed)
    print(f"wrote {out / MODEL_DIR}, {out / PROMPTS_FILE}, {out / REWARD_FILE}")


if __name__ == "__main__":
    main()
