"""PML's ``pytorch_metric_learning.testers``, every name unchanged.

``from pml_grouploss import testers`` can replace ``from pytorch_metric_learning import testers``
in an existing script: the rest of the script keeps working.
"""
from pytorch_metric_learning.testers import *  # noqa: F401,F403  (PML's public names, as-is)
