"""The side-by-side benchmark (``pml-grouploss-bench``): GroupLoss vs PML's losses in PML's
trainers and testers, class-disjoint validation folds, test classes touched once, tables, figures,
ablations. See ``docs/benchmark.md``.
"""

import os as _os

# OpenMP threads that busy-wait make every torch op ~10-20x slower when another process shares
# the cores (measured here: 2.0 s vs 0.10 s per training step of the small CNN on 2 shared cores).
# Passive waiting costs nothing measurable when the machine is quiet. It only takes effect when
# set before torch is first imported (as with the console script); users can override it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
