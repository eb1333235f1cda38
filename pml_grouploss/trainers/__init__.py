"""PML's ``pytorch_metric_learning.trainers``, every name unchanged, plus
:class:`ClassificationWarmup` and exact resume (:class:`ResumableTrainer`, :mod:`.resume`).

``from pml_grouploss import trainers`` can replace ``from pytorch_metric_learning import trainers``
in an existing script: the rest of the script keeps working.
"""
from pytorch_metric_learning.trainers import *  # noqa: F401,F403  (PML's public names, as-is)

from .classification_warmup import ClassificationWarmup
from .resume import ResumableSampler, ResumableTrainer, load_state, save_state
