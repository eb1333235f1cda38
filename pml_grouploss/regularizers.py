"""PML's ``pytorch_metric_learning.regularizers``, every name unchanged.

``from pml_grouploss import regularizers`` can replace
``from pytorch_metric_learning import regularizers`` in an existing script: the rest of the
script keeps working.
"""
from pytorch_metric_learning.regularizers import *  # noqa: F401,F403  (PML's public names, as-is)
