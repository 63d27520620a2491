"""Pin every method to the same number of threads: ITK (SimpleITK, itk-elastix, ANTs' own ITK), OpenMP, BLAS,
ONNX Runtime (given to its session) and PyTorch.

The environment variables are read by each library when its thread pool is first made, so ``pin_threads`` runs
before ANTs or itk is imported (the bench command calls it first); the runtime setters cover libraries already
loaded (SimpleITK is, by the imaging layer).
"""

from __future__ import annotations

import os

THREAD_VARIABLES = (
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",  # ITK: SimpleITK, itk-elastix and the ITK inside antspyx
    "ANTS_NUMBER_OF_THREADS",  # read by some ANTs builds besides ITK's
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def pin_threads(threads: int) -> dict[str, str]:
    """Set every thread count we know of to ``threads``; returns what was set (for the report)."""
    n = str(int(threads))
    for name in THREAD_VARIABLES:
        os.environ[name] = n
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:  # only when torch is installed (the training extra)
        import torch

        torch.set_num_threads(int(threads))
    except ImportError:
        pass
    return {name: n for name in THREAD_VARIABLES}


def pin_itk_threads(threads: int) -> None:
    """ITK Python (itk-elastix) has its own global thread pool: set it once itk is imported."""
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    itk.MultiThreaderBase.SetGlobalMaximumNumberOfThreads(int(threads))
