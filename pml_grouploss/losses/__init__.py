"""PML's ``pytorch_metric_learning.losses``, every name unchanged, plus ``GroupLoss``, its named
variants, ``GradMLLoss`` and ``ParametricDistributedLossWrapper``.

``from pml_grouploss import losses`` can replace ``from pytorch_metric_learning import losses``
in an existing script: the rest of the script keeps working.
"""
from pytorch_metric_learning.losses import *  # noqa: F401,F403  (PML's public names, as-is)

from .group_loss import GroupLoss
from .clamped_group_loss import ClampedGroupLoss
from .shifted_group_loss import ShiftedGroupLoss
from .gradml_loss import GradMLLoss
from .distributed_loss_wrapper import ParametricDistributedLossWrapper
