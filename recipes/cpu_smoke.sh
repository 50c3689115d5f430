#!/usr/bin/env bash
# CPU smoke run: the real OpenRLHF 0.11.2 trainer (Ray, DeepSpeed ZeRO-2, rollout actors)
# with a rollout allocator, on a machine without a GPU. A few GRPO steps of a tiny random
# model (2 with cero, which offers 3x the prompts per step; 6 with uniform); a minute or
# two on 2 cores (docs/cpu.md has measured times).
#
#   recipes/cpu_smoke.sh [ALLOCATOR] [EXTRA TRAINER FLAGS...]
#
#   ALLOCATOR  uniform | cero | vip | pilot_commit  (default: cero)
#   EXTRA      e.g. --train.async_enable, or --ckpt.load_enable --train.num_episodes 2 to resume
#
# Environment: WORK_DIR [<repo>/exp/cpu-smoke-<allocator>], PYTHON [<repo>/.venv/bin/python if
# present, else python3]. Needs scripts/setup.sh once (venv, DeepSpeed CPU ops).
#
# What it proves: flags, allocator, unequal groups, checkpoints and logging go through the
# real trainer. What it cannot: anything about learning (the model is random and the
# reward is a stand-in coin per prompt, see docs/cpu.md), nor GPU-only paths (NCCL, vLLM).
# The flags are those of the GPU recipe scaled down, plus the CPU-only ones marked below.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

ALLOCATOR=cero
if [[ $# -gt 0 && $1 != -* ]]; then ALLOCATOR=$1; shift; fi
WORK_DIR=${WORK_DIR:-$REPO/exp/cpu-smoke-$ALLOCATOR}
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
ASSETS=$WORK_DIR/assets

# Tiny offline assets: random Llama (hidden 64, 2 layers), local BPE tokenizer, 64 math-like
# prompts whose labels carry a latent pass rate, and the stand-in reward_func.py.
if [[ ! -d $ASSETS/model ]]; then
  "$PYTHON" -m openrlhf_cero.cpu.tiny "$ASSETS"
fi

export OPENRLHF_CERO_CPU=1  # stand-in vLLM, CUDA shims, logical GPUs for Ray

FLAGS=(
  --actor.model_name_or_path "$ASSETS/model"
  --reward.remote_url "$ASSETS/reward_func.py"
  --data.prompt_dataset "$ASSETS/prompts.jsonl" --data.input_key input --data.label_key label
  --data.max_samples 24 --data.max_len 64  # 24 prompts, 4 groups of 4 trained per step
  --rollout.max_new_tokens 16 --rollout.temperature 1.0
  --rollout.batch_size 4 --rollout.n_samples_per_prompt 4 --rollout.micro_batch_size 8
  --train.batch_size 16 --train.micro_batch_size 8
  --train.num_episodes 1 --train.max_epochs 1 --train.seed 42
  --algo.advantage.estimator group_norm
  --actor.num_nodes 1 --actor.num_gpus_per_node 1 --ref.num_nodes 1 --ref.num_gpus_per_node 1
  --vllm.num_engines 1 --vllm.tensor_parallel_size 1
  --vllm.sync_backend gloo         # CPU: no NCCL
  --ds.zero_stage 2
  --ds.attn_implementation sdpa    # CPU: flash-attn needs CUDA
  --actor.adam.lr 1e-4
  --rollout_allocator "$ALLOCATOR"
  --ckpt.path "$WORK_DIR/ckpt" --ckpt.save_steps 1 --ckpt.output_dir "$WORK_DIR/final"
  --logger.logging_steps 1 --logger.tensorboard_dir "$WORK_DIR/tensorboard"
  "$@"
)

exec "$PYTHON" -m openrlhf_cero.cli.train_ppo_ray "${FLAGS[@]}"
