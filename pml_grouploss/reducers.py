"""PML's ``pytorch_metric_learning.reducers``, every name unchanged.

``from pml_grouploss import reducers`` can replace ``from pytorch_metric_learning import reducers``
in an existing script: the rest of the script keeps working.
"""
from pytorch_metric_learning.reducers import *  # noqa: F401,F403  (PML's public names, as-is)
