"""Group Loss, Group Loss++ inference and GradML for pytorch-metric-learning.

Use the sub-packages as you use PML's modules of the same names::

    from pml_grouploss import losses, miners, distances, samplers, inference, evaluation
"""
__version__ = "0.1.0"
