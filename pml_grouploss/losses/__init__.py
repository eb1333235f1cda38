from .group_loss import GroupLoss
from .gradml_loss import GradMLLoss
from .distributed_loss_wrapper import ParametricDistributedLossWrapper
