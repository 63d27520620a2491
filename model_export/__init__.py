"""ONNX export of the trained cascade and the torch-free ONNX Runtime session the worker uses.

Two halves: ``export`` and ``parity`` import torch and ``training`` (making a model directory, checking it against
PyTorch); ``card``, ``runtime`` and ``bundle`` are what serving imports, and never import torch, ``training`` or
even ``onnx`` (the service installs onnxruntime alone), as an import-linter contract checks.
"""
