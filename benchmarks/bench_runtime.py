"""Registration speed of an exported model: ONNX Runtime against PyTorch eager, on the CPU and (when present) a GPU.

Per 128^3 case, the median of ``--repeats`` runs after warm-up, numpy in and numpy out as ``pipeline.segment_ct``
calls it (the input is the atlas's own canonical image). Targets (issue 5): ONNX Runtime on the CPU <= 1.5 s with
2 threads; on a GPU, within 2x of PyTorch eager on the same GPU, with every GridSample node placed on
CUDAExecutionProvider (read from ONNX Runtime's profile: a node it cannot place runs on the CPU silently).
On a GPU it also times the run on bound device buffers (no host copies), which is what PyTorch's number is.

Run: ``python benchmarks/bench_runtime.py MODEL_DIR [--threads 2]`` or ``oarmorph bench-runtime MODEL_DIR``.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_export.bundle import load_model_dir
from model_export.card import CHECKPOINT_NAME, ONNX_NAME
from model_export.runtime import CUDA, OnnxRegister, gridsample_providers

CPU_TARGET_S = 1.5
GPU_RATIO_TARGET = 2.0


def _median(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _torch_model(model_dir: Path, atlas_image: np.ndarray):
    try:
        from training.inference import load_inference_cascade
    except ImportError:  # the service install has no torch
        return None
    if not (model_dir / CHECKPOINT_NAME).is_file():
        return None
    model, _, _ = load_inference_cascade(model_dir / CHECKPOINT_NAME, atlas_image=atlas_image)
    return model.eval()


def run_benchmark(model_dir: str | Path, threads: int = 2, repeats: int = 5, log: Callable[[str], None] = print):
    folder = Path(model_dir)
    log(f"machine: {os.cpu_count()} cores, onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})")
    loaded = load_model_dir(folder, threads=threads, device="cpu", warmup=True)
    image = loaded.atlas.image
    result: dict = {"model": loaded.name, "threads": threads, "repeats": repeats, "cores": os.cpu_count()}
    ort_cpu = _median(lambda: loaded.register(image), repeats)
    result["ort_cpu_s"] = ort_cpu
    log(
        f"ONNX Runtime CPU ({threads} threads): {ort_cpu:.3f} s per 128^3 case (median of {repeats}, warm-up "
        f"{loaded.register.warmup_seconds:.2f} s) [target <= {CPU_TARGET_S} s: "
        f"{'met' if ort_cpu <= CPU_TARGET_S else 'NOT met'}]"
    )
    model = _torch_model(folder, image)
    if model is None:
        log("PyTorch: not installed or no checkpoint.pt, skipped")
        return result
    import torch

    from training.inference import TorchRegister

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch_register = TorchRegister(model)
    torch_register(image)  # warm-up
    result["torch_cpu_s"] = _median(lambda: torch_register(image), repeats)
    torch.set_num_threads(previous)
    log(f"PyTorch eager CPU ({threads} threads): {result['torch_cpu_s']:.3f} s per case")
    if CUDA not in ort.get_available_providers() or not torch.cuda.is_available():
        log("GPU: no CUDAExecutionProvider or no CUDA device for PyTorch here, skipped")
        return result
    gpu = OnnxRegister(folder / ONNX_NAME, threads, device="cuda", warmup=True)
    gpu.warm_up(runs=3)
    result["ort_cuda_host_s"] = _median(lambda: gpu(image), repeats * 4)
    result["ort_cuda_bound_s"] = _median(gpu.run_bound, repeats * 4)
    placement = gridsample_providers(folder / ONNX_NAME, device="cuda", threads=threads)
    result["gridsample_providers"] = placement["providers"]
    result["gridsample_all_on_cuda"] = placement["all_on_cuda"]
    cuda_model = model.cuda()
    x = torch.from_numpy(np.ascontiguousarray(image))[None, None].cuda()
    with torch.inference_mode():
        for _ in range(3):
            cuda_model(x)
        torch.cuda.synchronize()
        result["torch_cuda_s"] = _median(lambda: cuda_model(x), repeats * 4, torch.cuda.synchronize)
    ratio = result["ort_cuda_bound_s"] / result["torch_cuda_s"]
    result["ort_over_torch_cuda"] = ratio
    log(f"GPU: {torch.cuda.get_device_name()}")
    log(
        f"ONNX Runtime CUDA: {result['ort_cuda_bound_s'] * 1e3:.1f} ms on bound device buffers, "
        f"{result['ort_cuda_host_s'] * 1e3:.1f} ms numpy in and out"
    )
    log(
        f"PyTorch eager CUDA: {result['torch_cuda_s'] * 1e3:.1f} ms; ratio {ratio:.2f} "
        f"[target <= {GPU_RATIO_TARGET}: {'met' if ratio <= GPU_RATIO_TARGET else 'NOT met'}]"
    )
    log(
        f"GridSample node runs by provider: {placement['providers']} "
        f"({'all on CUDAExecutionProvider' if placement['all_on_cuda'] else 'NOT all on CUDAExecutionProvider'})"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--skip-missing", action="store_true", help="exit 0 with a note when there is no model.onnx")
    args = parser.parse_args(argv)
    if not (args.model_dir / ONNX_NAME).is_file():
        print(f"no {ONNX_NAME} in {args.model_dir}: export one with `oarmorph export` (see README)")
        return 0 if args.skip_missing else 2
    result = run_benchmark(args.model_dir, args.threads, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
