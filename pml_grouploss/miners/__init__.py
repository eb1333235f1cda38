from .anchor_miner import AnchorMiner
