"""PyTorch implementation, training and evaluation of the cascade of Huang et al. and its baselines.

The only place (with the exporter in ``model_export``) where torch is imported.
"""
