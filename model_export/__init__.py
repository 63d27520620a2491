"""ONNX export of the trained cascade and the torch-free ONNX Runtime session the worker uses."""
