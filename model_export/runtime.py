"""The registration as the worker runs it: an ONNX Runtime session, numpy in, numpy out, torch-free.

``OnnxRegister`` is the ``register`` callable of ``pipeline.segment_ct``. It chooses its execution provider at
load: CUDAExecutionProvider when the onnxruntime-gpu build and a usable GPU are there, else the CPU, saying so in
a log line (a model that silently runs on the CPU is a 50x slower service nobody can explain). It warms the
session up at load (the first run allocates and, on CUDA, picks convolution algorithms), and on CUDA it binds
preallocated device buffers (IO binding): the canonical image is copied to the device once, the two fields
back once, and nothing else crosses the bus.

``gridsample_providers`` reads ONNX Runtime's profile to say where each GridSample node ran: a node the CUDA
provider cannot place falls back to the CPU silently, with two copies of a 128^3 volume around it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .card import INPUT_NAME, OUTPUT_NAMES, RuntimeUnavailableError

log = logging.getLogger("oarmorph.runtime")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


def session_options(
    threads: int | None = None, inter_threads: int | None = 1, profile_dir: str | Path | None = None
) -> ort.SessionOptions:
    """Thread counts as configured (None: ONNX Runtime's default, every core), all graph optimisations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = int(threads)
    if inter_threads:
        options.inter_op_num_threads = int(inter_threads)
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
    return options


class OnnxRegister:
    """``register(canonical image [128, 128, 128]) -> (field, affine_field)``, each [3, 128, 128, 128] float32.

    ``device``: ``auto`` (CUDA when possible, else CPU with a log line), ``cpu``, or ``cuda`` (refused when the
    build or the GPU is missing). ``threads``/``inter_threads``: ONNX Runtime's intra- and inter-op thread counts
    (the service's settings). ``profile_dir``: write ONNX Runtime's profile there (``end_profiling``).
    ``io_binding``: bind preallocated buffers (default: on CUDA only; on the CPU it only saves an allocation).
    """

    def __init__(
        self,
        model_path: str | Path,
        threads: int | None = None,
        inter_threads: int | None = 1,
        device: str = "auto",
        device_id: int = 0,
        warmup: bool = True,
        profile_dir: str | Path | None = None,
        io_binding: bool | None = None,
    ) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        self.model_path = Path(model_path)
        self.threads = threads
        self.device_id = device_id
        options = session_options(threads, inter_threads, profile_dir)
        available = ort.get_available_providers()
        self.session: ort.InferenceSession
        if device != "cpu" and CUDA in available:
            cuda_options = {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"}
            self.session = ort.InferenceSession(str(self.model_path), options, providers=[(CUDA, cuda_options), CPU])
            if self.session.get_providers()[0] != CUDA:  # the GPU build without a usable GPU or CUDA runtime
                if device == "cuda":
                    raise RuntimeUnavailableError(
                        "onnxruntime-gpu is installed but CUDAExecutionProvider could not be created (no GPU, or no "
                        "matching CUDA/cuDNN libraries)"
                    )
                log.warning(
                    "CUDAExecutionProvider could not be created (no GPU, or no matching CUDA/cuDNN libraries): "
                    "falling back to CPUExecutionProvider (%s threads)",
                    threads or "default",
                )
        else:
            if device == "cuda":
                raise RuntimeUnavailableError(
                    f"CUDAExecutionProvider is not in this onnxruntime build (providers: {', '.join(available)}); "
                    "install onnxruntime-gpu"
                )
            if device == "auto":
                log.info(
                    "CUDAExecutionProvider unavailable (onnxruntime build without it: %s): falling back to "
                    "CPUExecutionProvider (%s threads)",
                    ", ".join(available),
                    threads or "default",
                )
            self.session = ort.InferenceSession(str(self.model_path), options, providers=[CPU])
        self.provider = self.session.get_providers()[0]
        self.on_gpu = self.provider == CUDA
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in outputs]
        if self.input_name != INPUT_NAME or tuple(self.output_names) != OUTPUT_NAMES:
            raise RuntimeUnavailableError(
                f"{self.model_path}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}, found "
                f"{self.input_name!r} and {tuple(self.output_names)}"
            )
        self.input_shape = tuple(int(d) for d in inputs[0].shape)
        self.output_shapes = [tuple(int(d) for d in o.shape) for o in outputs]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._binding = self._bind() if (self.on_gpu if io_binding is None else io_binding) else None
        self.warmup_seconds: float | None = None
        if warmup:
            self.warm_up()

    # --- device buffers (CUDA) ---------------------------------------------------------------------------------

    def _bind(self):
        """Preallocated device buffers bound once: each call copies the image in and the fields out, nothing more."""
        where = ("cuda", self.device_id) if self.on_gpu else ("cpu", 0)
        self._input = ort.OrtValue.ortvalue_from_shape_and_type(list(self.input_shape), np.float32, *where)
        self._outputs = [
            ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, *where) for shape in self.output_shapes
        ]
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, self._input)
        for name, value in zip(self.output_names, self._outputs, strict=True):
            binding.bind_ortvalue_output(name, value)
        return binding

    def run_bound(self) -> None:
        """One run on the bound device buffers (no host copies): what the benchmark times against PyTorch's GPU."""
        if self._binding is None:
            raise RuntimeUnavailableError("run_bound needs bound buffers (io_binding, the default on CUDA)")
        self._binding.synchronize_inputs()
        self.session.run_with_iobinding(self._binding)
        self._binding.synchronize_outputs()

    # --- the register callable ----------------------------------------------------------------------------------

    def _batch(self, image: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(image, dtype=np.float32)
        if x.shape == self.input_shape[2:]:
            x = x[None, None]
        if x.shape != self.input_shape:
            raise ValueError(f"the canonical image must be {self.input_shape[2:]}, got {image.shape}")
        return x

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fields with their batch axis, [1, 3, 128, 128, 128] each."""
        x = self._batch(image)
        if self._binding is not None:
            self._input.update_inplace(x)  # host -> device, into the bound buffer
            self.run_bound()
            field, affine = self._binding.copy_outputs_to_cpu()  # device -> host, once each
            return field, affine
        field, affine = self.session.run(self.output_names, {self.input_name: x})
        return field, affine

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        field, affine = self.run(image)
        return field[0], affine[0]

    def warm_up(self, runs: int = 1) -> float:
        """Run on a mid-grey image (allocations, CUDA algorithm search happen here, not in the first job)."""
        start = time.perf_counter()
        x = np.full(self.input_shape, 0.5, np.float32)
        for _ in range(runs):
            self.run(x)
        self.warmup_seconds = time.perf_counter() - start
        return self.warmup_seconds

    def end_profiling(self) -> Path:
        return Path(self.session.end_profiling())


def node_providers(profile_path: str | Path, op_type: str | None = None) -> dict[str, Counter]:
    """From an ONNX Runtime profile: for each op type (or only ``op_type``), how many node runs each provider did."""
    events = json.loads(Path(profile_path).read_text())
    out: dict[str, Counter] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "op_name" not in args or "provider" not in args:
            continue
        if op_type is not None and args["op_name"] != op_type:
            continue
        out.setdefault(args["op_name"], Counter())[args["provider"]] += 1
    return out


def gridsample_providers(
    model_path: str | Path, device: str = "cuda", threads: int | None = None, device_id: int = 0
) -> dict:
    """Where every GridSample node of the model runs on ``device`` (one profiled run after warm-up).

    Returns ``{"providers": {provider: node runs}, "all_on_cuda": bool, "profile": path}``.
    """
    with tempfile.TemporaryDirectory(prefix="oarmorph-ortprof-") as tmp:
        reg = OnnxRegister(model_path, threads, device=device, device_id=device_id, warmup=True, profile_dir=tmp)
        reg.run(np.full(reg.input_shape, 0.5, np.float32))
        path = reg.end_profiling()
        counts = node_providers(path, "GridSample").get("GridSample", Counter())
        size = os.path.getsize(path)
    return {"providers": dict(counts), "all_on_cuda": bool(counts) and set(counts) == {CUDA}, "profile_bytes": size}
