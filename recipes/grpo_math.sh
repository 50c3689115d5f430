#!/usr/bin/env bash
# GRPO (--algo.advantage.estimator group_norm) on DAPO-Math-17k with a rollout allocator
# and, optionally, a rollout scheduler.
#   recipes/grpo_math.sh [uniform|cero|vip|pilot_commit] [none|cbs] [EXTRA TRAINER FLAGS...]
# The scheduler (default none) chooses each step's training rollouts from the fresh ones
# and a buffer of earlier ones (docs/cbs.md); it combines with every allocator.
# Everything else (GPU counts, batch, DRY_RUN=1, PRINT_FLAGS=1): see train_math_ray.sh.
set -euo pipefail
ALLOCATOR=cero
SCHEDULER=none
if [[ $# -gt 0 && $1 != -* ]]; then ALLOCATOR=$1; shift; fi
if [[ $# -gt 0 && $1 != -* ]]; then SCHEDULER=$1; shift; fi
case $SCHEDULER in
  none) SCHEDULER_FLAGS=() ;;
  cbs)
    SCHEDULER_FLAGS=(--rollout_scheduler cbs)
    export SAVE_DIR=${SAVE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/exp/math-$ALLOCATOR-cbs-group_norm}
    ;;
  *) echo "unknown scheduler '$SCHEDULER': use none or cbs" >&2; exit 2 ;;
esac
exec "$(dirname "${BASH_SOURCE[0]}")/train_math_ray.sh" "$ALLOCATOR" group_norm "${SCHEDULER_FLAGS[@]}" "$@"
