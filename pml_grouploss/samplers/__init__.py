"""PML's ``pytorch_metric_learning.samplers``, every name unchanged, plus ``NearestClassSampler``.

``from pml_grouploss import samplers`` can replace ``from pytorch_metric_learning import samplers``
in an existing script: the rest of the script keeps working.
"""
from pytorch_metric_learning.samplers import *  # noqa: F401,F403  (PML's public names, as-is)

from .nearest_class_sampler import NearestClassSampler
