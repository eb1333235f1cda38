from .group_loss import GroupLoss
from .gradml_loss import GradMLLoss
