"""The one inference path: a CT in, one mask per atlas OAR on the CT's own grid out (torch-free).

``segment_ct`` is what the CLI, the evaluation, the worker and the benchmarks run; the registration itself
comes in as a callable (``training.inference.TorchRegister`` today, the ONNX Runtime session later), so this
package never imports torch or ``training``.
"""
