#!/usr/bin/env bash
# REINFORCE++-baseline (--algo.advantage.estimator reinforce_baseline) on DAPO-Math-17k
# with a rollout allocator.
#   recipes/reinforce_baseline_math.sh [uniform|cero|vip|pilot_commit] [EXTRA TRAINER FLAGS...]
# Everything else (GPU counts, batch, DRY_RUN=1, PRINT_FLAGS=1): see train_math_ray.sh.
set -euo pipefail
ALLOCATOR=cero
if [[ $# -gt 0 && $1 != -* ]]; then ALLOCATOR=$1; shift; fi
exec "$(dirname "${BASH_SOURCE[0]}")/train_math_ray.sh" "$ALLOCATOR" reinforce_baseline "$@"
