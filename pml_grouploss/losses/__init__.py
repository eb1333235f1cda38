from .group_loss import GroupLoss
