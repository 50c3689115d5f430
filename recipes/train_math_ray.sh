#!/usr/bin/env bash
# Math RLVR with a per-prompt rollout allocator: Qwen2.5-Math-1.5B on DAPO-Math-17k,
# OpenRLHF 0.11.2 (dotted flags), hybrid engine, checkpoints on, `ray job submit`.
#
#   recipes/train_math_ray.sh [ALLOCATOR] [ESTIMATOR] [EXTRA TRAINER FLAGS...]
#
#   ALLOCATOR  uniform | cero | vip | pilot_commit          (default: cero)
#              uniform = stock OpenRLHF (every prompt gets N_SAMPLES rollouts): the control run.
#   ESTIMATOR  group_norm (GRPO) | reinforce_baseline (REINFORCE++-baseline)  (default: group_norm)
#   EXTRA      any train_ppo_ray flag, appended last (e.g. --allocator.max_samples 16; docs/flags.md)
#
# grpo_math.sh and reinforce_baseline_math.sh call this script with the estimator fixed.
#
# Environment (defaults in brackets):
#   RAY_ADDRESS    Ray dashboard of a running cluster [http://127.0.0.1:8265]
#   NUM_NODES      nodes [1];  GPUS_PER_NODE  GPUs per node [8]
#   MODEL [Qwen/Qwen2.5-Math-1.5B]   DATASET [zhuzilin/dapo-math-17k]
#   SAVE_DIR       checkpoints and the final model [<repo>/exp/math-<allocator>-<estimator>]
#   ROLLOUT_BATCH  prompts per step [16 x GPUs]; TRAIN_BATCH samples per optimizer step [ROLLOUT_BATCH x N_SAMPLES / 4]
#   N_SAMPLES      --rollout.n_samples_per_prompt: the per-prompt average the allocator keeps [8]
#   EVAL_DATASET   evaluation set, e.g. OpenRLHF/aime-2024 (evaluated at a fixed n) [none]
#   ASYNC=1        async trainer (--train.async_enable) instead of the hybrid engine: OpenRLHF
#                  refuses async with vLLM sleep, so actor+reference take half of each node's
#                  GPUs and vLLM engines the other half
#   DRY_RUN=1      check every flag with OpenRLHF's own parser and checks plus ours, here,
#                  without Ray or GPUs (no vLLM on this machine: also set OPENRLHF_CERO_CPU=1)
#   PRINT_FLAGS=1  print the trainer flags, one per line, and exit
#   PYTHON         interpreter for DRY_RUN [python3]
#
# GPU counts. The hybrid engine (--train.colocate_all) puts the actor, the reference model
# and one vLLM engine (tensor parallel 1 is enough for 1.5B) on every GPU, so one number
# sets the size: 8 GPUs = NUM_NODES=1 GPUS_PER_NODE=8; 64 GPUs = NUM_NODES=8 GPUS_PER_NODE=8.
# The batch follows the GPU count (16 prompts x 8 rollouts per GPU per step), so
#   8 GPUs:  128 prompts/step, 1,024 rollouts/step, 4 optimizer steps of 256 samples;
#   64 GPUs: 1,024 prompts/step, 8,192 rollouts/step, 4 optimizer steps of 2,048 samples.
# OpenRLHF needs ROLLOUT_BATCH x N_SAMPLES / --rollout.micro_batch_size >= actor GPUs; the
# allocators also need TRAIN_BATCH and the micro batch to divide ROLLOUT_BATCH x N_SAMPLES
# (DRY_RUN says so, naming the flag, if they do not). With a 7B+ model raise
# --vllm.tensor_parallel_size (and lower the engine count to GPUs / tp) and use --ds.zero_stage 3.
#
# Every node needs this repository's package installed (pip install -e .) or
# the working_dir upload below; the reward file is resolved relative to the job's working
# directory on each node.
#
# Re-running the same command resumes from SAVE_DIR/ckpt (--ckpt.load_enable), allocator
# state included. Packing and dynamic batching (flash-attn) and NCCL weight sync are GPU
# paths that the CPU CI of this project does not exercise (docs/faq.md).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

ALLOCATOR=cero
ESTIMATOR=group_norm
if [[ $# -gt 0 && $1 != -* ]]; then ALLOCATOR=$1; shift; fi
if [[ $# -gt 0 && $1 != -* ]]; then ESTIMATOR=$1; shift; fi
EXTRA_FLAGS=("$@")

NUM_NODES=${NUM_NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
GPUS=$((NUM_NODES * GPUS_PER_NODE))
MODEL=${MODEL:-Qwen/Qwen2.5-Math-1.5B}
DATASET=${DATASET:-zhuzilin/dapo-math-17k}
SAVE_DIR=${SAVE_DIR:-$REPO/exp/math-$ALLOCATOR-$ESTIMATOR}
N_SAMPLES=${N_SAMPLES:-8}
ROLLOUT_BATCH=${ROLLOUT_BATCH:-$((16 * GPUS))}
TRAIN_BATCH=${TRAIN_BATCH:-$((ROLLOUT_BATCH * N_SAMPLES / 4))}
REWARD_FUNC=recipes/math_reward_func.py  # OpenRLHF's grader; see the file

case $ESTIMATOR in
  # GRPO as in OpenRLHF's DAPO example: KL as a loss with the k3 estimator.
  group_norm) ALGO_FLAGS=(--algo.kl.use_loss --algo.kl.estimator k3 --algo.kl.init_coef 1e-3) ;;
  # REINFORCE++-baseline as in OpenRLHF's math examples: k2, a light KL.
  reinforce_baseline) ALGO_FLAGS=(--algo.kl.use_loss --algo.kl.estimator k2 --algo.kl.init_coef 1e-5) ;;
  *) echo "unknown estimator '$ESTIMATOR': use group_norm (GRPO) or reinforce_baseline" >&2; exit 2 ;;
esac

case $ALLOCATOR in
  uniform | vip) ALLOCATOR_FLAGS=() ;;  # VIP's defaults follow the estimator (docs/vip.md)
  # CERO's defaults, spelled out: ROLLOUT_BATCH prompts per step (prompt_oversample 1), rollouts
  # moved between them towards prompts whose outcome is uncertain, and a saturation scale of
  # 1024 rollouts, the settings the simulator favours (docs/cero.md, "Tuning the defaults").
  # Each step trains ROLLOUT_BATCH x N_SAMPLES samples; prompt_oversample > 1 offers more
  # prompts per step (an epoch then takes fewer steps).
  cero) ALLOCATOR_FLAGS=(--allocator.cero.prompt_oversample 1 --allocator.cero.saturation_scale 1024) ;;
  # n_pilot defaults to max(4, N_SAMPLES / 4): 4 pilot + 4 commit rollouts at n = 8.
  pilot_commit) ALLOCATOR_FLAGS=() ;;
  *) echo "unknown allocator '$ALLOCATOR': use uniform, cero, vip or pilot_commit" >&2; exit 2 ;;
esac

if [[ ${ASYNC:-0} == 1 ]]; then
  # async: generation of step t+1 overlaps training on step t (one step off-policy)
  TRAIN_GPUS_PER_NODE=$((GPUS_PER_NODE / 2))
  PLACEMENT_FLAGS=(
    --vllm.num_engines $((GPUS / 2)) --train.colocate_actor_ref --train.async_enable
    --vllm.gpu_memory_utilization 0.9
  )
else
  # hybrid engine: actor, reference and a vLLM engine on every GPU, vLLM asleep while training
  TRAIN_GPUS_PER_NODE=$GPUS_PER_NODE
  PLACEMENT_FLAGS=(
    --vllm.num_engines "$GPUS" --train.colocate_all --vllm.enable_sleep --ds.enable_sleep
    --vllm.gpu_memory_utilization 0.6
  )
fi

FLAGS=(
  # placement
  --actor.num_nodes "$NUM_NODES" --actor.num_gpus_per_node "$TRAIN_GPUS_PER_NODE"
  --ref.num_nodes "$NUM_NODES" --ref.num_gpus_per_node "$TRAIN_GPUS_PER_NODE"
  "${PLACEMENT_FLAGS[@]}"
  --vllm.tensor_parallel_size 1 --vllm.sync_backend nccl --vllm.enforce_eager

  # model, data, reward
  --actor.model_name_or_path "$MODEL"
  --data.prompt_dataset "$DATASET" --data.input_key prompt --data.label_key label
  --data.apply_chat_template
  --reward.remote_url "$REWARD_FUNC"
  --data.max_len 4096 --rollout.max_new_tokens 3072
  --rollout.temperature 1.0

  # batch: ROLLOUT_BATCH prompts x N_SAMPLES rollouts per step on average
  --rollout.batch_size "$ROLLOUT_BATCH" --rollout.n_samples_per_prompt "$N_SAMPLES"
  --rollout.micro_batch_size 16
  --train.batch_size "$TRAIN_BATCH" --train.micro_batch_size 4
  --train.max_epochs 1 --train.num_episodes 20 --train.seed 42
  --ds.packing_samples --train.dynamic_batch_enable
  --train.max_tokens_per_gpu 16384 --rollout.max_tokens_per_gpu 32768

  # algorithm
  --algo.advantage.estimator "$ESTIMATOR"
  "${ALGO_FLAGS[@]}"
  --actor.adam.lr 1e-6 --ds.zero_stage 2 --ds.param_dtype bf16
  --actor.gradient_checkpointing_enable

  # rollout allocation (openrlhf-cero)
  --rollout_allocator "$ALLOCATOR"
  "${ALLOCATOR_FLAGS[@]}"

  # checkpoints: every 10 steps, 3 kept, resumed on re-run
  --ckpt.path "$SAVE_DIR/ckpt" --ckpt.save_steps 10 --ckpt.max_num 3 --ckpt.load_enable
  --ckpt.output_dir "$SAVE_DIR/final" --ckpt.save_hf

  # logging: allocator/* metrics land next to OpenRLHF's (docs/metrics.md)
  --logger.logging_steps 1 --logger.tensorboard_dir "$SAVE_DIR/tensorboard"
)
if [[ -n ${EVAL_DATASET:-} ]]; then
  FLAGS+=(--eval.dataset "$EVAL_DATASET" --eval.steps 10 --eval.n_samples_per_prompt 4 --eval.temperature 1.0)
fi
FLAGS+=("${EXTRA_FLAGS[@]}")

if [[ ${PRINT_FLAGS:-0} == 1 ]]; then
  printf '%s\n' "${FLAGS[@]}"
  exit 0
fi
if [[ ${DRY_RUN:-0} == 1 ]]; then
  exec "${PYTHON:-python3}" -m openrlhf_cero.cli.train_ppo_ray "${FLAGS[@]}" --dry_run
fi

RUNTIME_ENV=$(printf '{"working_dir": "%s", "excludes": [".git", ".venv", ".cache", "exp", "docs/figures"]}' "$REPO")
ray job submit --address="${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --runtime-env-json="$RUNTIME_ENV" \
  -- python3 -m openrlhf_cero.cli.train_ppo_ray "${FLAGS[@]}"
