"""GroupLoss inside an ordinary PML training script (MetricLossOnly + MPerClassSampler).

Runs offline on the embedded Omniglot subset in about a minute on 2 CPU cores:

    python examples/grouploss_in_pml_trainer.py [--epochs 5]

The only GroupLoss-specific lines are marked "<-": the loss owns a classifier, so it needs
`num_classes`, and its parameters get their own optimizer (`metric_loss_optimizer`) with a
learning rate of 1e-1, which this SmallCNN setting (the benchmark's) tolerates; in the settings
of PML's notebooks use 1e-3 to 1e-2 (measured in docs/losses.md).
"""

import argparse

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from torchvision import transforms as T

# <- was: from pytorch_metric_learning import losses, miners, samplers, testers, trainers
from pml_grouploss import losses, miners, samplers, testers, trainers
from pml_grouploss.trunks import SmallCNN
from pml_grouploss.datasets import Omniglot

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=5, help="training epochs, >= 1 (default 5)")
args = parser.parse_args()
if args.epochs < 1:
    parser.error(f"argument --epochs: must be >= 1, got {args.epochs}")

torch.manual_seed(0)
np.random.seed(0)  # PML's MPerClassSampler draws from NumPy's global random state
tf = T.Compose([T.ToTensor(), T.Normalize([0.08], [0.25])])
train, test = Omniglot(split="train", transform=tf), Omniglot(split="test", transform=tf)

trunk = SmallCNN(in_channels=1, width=64)
embedder = torch.nn.Linear(64, 64)
loss = losses.GroupLoss(
    num_classes=train.num_classes, embedding_size=64, temperature=24.0, num_iterations=1  # <-
)
miner = miners.AnchorMiner(num_anchors_per_class=2)  # <- optional
optimizers = {
    "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3),
    "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=1e-3),
    "metric_loss_optimizer": torch.optim.Adam(loss.parameters(), lr=1e-1),  # <-
}
sampler = samplers.MPerClassSampler(
    train.labels, m=8, batch_size=120, length_before_new_iter=len(train)
)
trainer = trainers.MetricLossOnly(
    models={"trunk": trunk, "embedder": embedder},
    optimizers=optimizers,
    batch_size=120,
    loss_funcs={"metric_loss": loss},
    mining_funcs={"tuple_miner": miner},
    dataset=train,
    sampler=sampler,
    dataloader_num_workers=0,
)
trainer.train(num_epochs=args.epochs)

tester = testers.GlobalEmbeddingSpaceTester(
    accuracy_calculator=AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count"
    ),
    dataloader_num_workers=0,
    batch_size=256,
)
acc = tester.test({"test": test}, args.epochs, trunk, embedder)["test"]
print({k: round(v, 3) for k, v in acc.items() if k != "epoch"})
