"""PML-compatible samplers."""
from .nearest_class_sampler import NearestClassSampler

__all__ = ["NearestClassSampler"]
