"""``python -m benchmarks.small_model``: see :mod:`benchmarks.small_model.cli`."""

import sys

from benchmarks.small_model.cli import main

sys.exit(main())
