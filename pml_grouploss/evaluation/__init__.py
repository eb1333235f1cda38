"""Evaluation: Recall@K, CMC and re-id mAP as PML ``AccuracyCalculator`` subclasses (GL++ §5.3)."""

from .recall_at_k import RecallAtKAccuracyCalculator
from .reid_accuracy_calculator import ReIDAccuracyCalculator

__all__ = ["RecallAtKAccuracyCalculator", "ReIDAccuracyCalculator"]
