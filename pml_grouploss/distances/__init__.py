"""PML's ``pytorch_metric_learning.distances``, every name unchanged, plus
``PearsonCorrelation``.

``from pml_grouploss import distances`` can replace
``from pytorch_metric_learning import distances`` in an existing script: the rest of the script
keeps working.
"""
from pytorch_metric_learning.distances import *  # noqa: F401,F403  (PML's public names, as-is)

from .pearson_correlation import PearsonCorrelation
