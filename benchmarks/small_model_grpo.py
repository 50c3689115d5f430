"""Entry point of the small-model GRPO benchmark; the code is the package benchmarks/small_model/.

    PYTHONPATH=. python benchmarks/small_model_grpo.py --preset cpu --out OUT        # as docs/benchmarks-small-model.md
    PYTHONPATH=. python benchmarks/small_model_grpo.py --report docs/results/small_model_cpu.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.small_model`

from benchmarks.small_model.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
