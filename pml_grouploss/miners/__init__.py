"""PML's ``pytorch_metric_learning.miners``, every name unchanged, plus ``AnchorMiner``.

``from pml_grouploss import miners`` can replace ``from pytorch_metric_learning import miners``
in an existing script: the rest of the script keeps working.
"""
from pytorch_metric_learning.miners import *  # noqa: F401,F403  (PML's public names, as-is)

from .anchor_miner import AnchorMiner
