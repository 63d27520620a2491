"""One adapter per method: ``register(fixed canonical image [k, j, i]) -> pull field (3, k, j, i)``, canonical voxels.

Every adapter registers the atlas's canonical image (moving) to the patient's (fixed), both exactly what the
oarmorph model sees, and returns the contract's field; ``run.py`` warps the atlas OARs with it. Settings follow
what a user of each tool would do by default:

* ANTs: ``ants.registration(type_of_transform="SyN")``: affine then SyN, Mattes mutual information, antspyx's
  default schedule; the composite transform composed by ANTs itself (``fields.ants_transforms_to_field``).
* elastix (itk-elastix): elastix's default ``affine`` then ``bspline`` parameter maps (AdvancedMattesMutualInformation,
  4 resolutions, adaptive stochastic gradient descent, B-spline grid 10 mm with a bending-energy penalty), the
  usual radiotherapy set-up; transformix's deformation field. Its metrics run on one thread (see
  ``elastix_parameter_object``), the rest of elastix on all.
* SimpleITK: what its registration notebooks do: a centre-of-mass initialised affine (Mattes MI, regular-step
  gradient descent, 3 levels), then multi-resolution diffeomorphic demons on the affinely resampled atlas; the
  composite sampled. (Its B-spline with Mattes MI took 2-3 minutes on a 64^3 test image on one thread, and its
  L-BFGS variants stopped at once: demons is what a SimpleITK user who wants an answer today would run.)
* oarmorph: the exported ONNX model on ONNX Runtime (CPU), and the same weights on PyTorch on a GPU when one
  is there, each warping the atlas OARs at the model's calibrated mask level per OAR when its card has them
  (what ``segment_ct`` and the service do); the model's affine stage alone (its ``affine_field`` output, at 0.5
  as every other method: the levels were calibrated for the whole cascade).
* no registration: the zero canonical field, i.e. the atlas translated so that the body centres coincide as the
  canonical windows place them (and the window alignment), nothing more.

``METHODS`` lists them; ``unavailable(key, ...)`` says why one cannot run here (a package absent, no model, no
GPU), and the bench skips it with that reason.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import fields
from .threads import pin_itk_threads

FieldFn = Callable[[np.ndarray], np.ndarray]
SEED = 20260101


@dataclass(frozen=True)
class MethodInfo:
    key: str
    name: str
    kind: str  # the table's "method type"
    needs: tuple[str, ...] = ()  # python modules it needs
    needs_model: bool = False
    needs_gpu: bool = False
    calibrated_levels: bool = False  # warps at the model's calibrated per-OAR mask levels (its card), as it serves


METHODS: dict[str, MethodInfo] = {
    m.key: m
    for m in (
        MethodInfo(
            "oarmorph",
            "oarmorph (ONNX, CPU)",
            "learned cascade, ONNX Runtime CPU",
            ("onnxruntime",),
            needs_model=True,
            calibrated_levels=True,
        ),
        MethodInfo(
            "oarmorph-gpu",
            "oarmorph (PyTorch, GPU)",
            "learned cascade, PyTorch CUDA",
            ("torch",),
            needs_model=True,
            needs_gpu=True,
            calibrated_levels=True,
        ),
        MethodInfo(
            "affine", "oarmorph affine stage", "the model's affine stage alone", ("onnxruntime",), needs_model=True
        ),
        MethodInfo("ants", "ANTs SyN", "antspyx: affine + SyN, MI, default schedule", ("ants",)),
        MethodInfo("elastix", "elastix", "itk-elastix: affine + B-spline, AdvancedMattesMI", ("itk", "itk.elastix")),
        MethodInfo("simpleitk", "SimpleITK", "SimpleITK: affine (MI) + diffeomorphic demons", ("SimpleITK",)),
        MethodInfo("none", "no registration", "body centres aligned (the canonical windows)"),
    )
}
DEFAULT_METHODS = ("oarmorph", "oarmorph-gpu", "affine", "ants", "elastix", "simpleitk", "none")
REFERENCE = "oarmorph"  # time ratios are to this method's time
PACKAGE_HINT = {"ants": "antspyx", "itk": "itk-elastix", "itk.elastix": "itk-elastix", "torch": "torch"}


def _module_present(name: str) -> bool:
    if name == "itk.elastix":
        if importlib.util.find_spec("itk") is None:
            return False
        import itk

        return hasattr(itk, "elastix_registration_method")
    return importlib.util.find_spec(name) is not None


def gpu_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def unavailable(key: str, model_dir: Path | None) -> str | None:
    """Why method ``key`` cannot run here, or None."""
    info = METHODS[key]
    for module in info.needs:
        if not _module_present(module):
            package = PACKAGE_HINT.get(module, module)
            return f"{package} is not installed (pip install -e '.[bench]')"
    if info.needs_model:
        if model_dir is None:
            return "no oarmorph model for this cohort"
        if key == "oarmorph-gpu":
            if not (model_dir / "checkpoint.pt").is_file():
                return f"{model_dir} has no checkpoint.pt"
        elif not (model_dir / "model.onnx").is_file():
            return f"{model_dir} has no model.onnx (oarmorph export, see models/README.md)"
    if info.needs_gpu and not gpu_available():
        return "no CUDA GPU on this machine"
    return None


# --- the classical tools ----------------------------------------------------------------------------------------


def ants_syn(atlas_image: np.ndarray, spacing=fields.CANONICAL_SPACING) -> FieldFn:
    """antspyx: affine then SyN with mutual information, its default schedule; moving = the atlas."""
    import ants

    moving = fields.to_ants(atlas_image, spacing)

    def register(fixed_image: np.ndarray) -> np.ndarray:
        fixed = fields.to_ants(fixed_image, spacing)
        with tempfile.TemporaryDirectory(prefix="oarmorph-ants-") as tmp:  # its transforms, 50 MB a case
            reg = ants.registration(
                fixed, moving, type_of_transform="SyN", random_seed=SEED, outprefix=str(Path(tmp) / "syn_")
            )
            return fields.ants_transforms_to_field(reg["fwdtransforms"], fixed, moving, spacing)

    return register


def elastix_parameter_object(resolutions: int = 4, iterations: int | None = None):
    """elastix's default affine and B-spline maps, the usual radiotherapy set-up (no result image written)."""
    import itk

    po = itk.ParameterObject.New()
    for name in ("affine", "bspline"):
        pm = po.GetDefaultParameterMap(name, resolutions)
        pm["WriteResultImage"] = ["false"]
        pm["RandomSeed"] = [str(SEED)]
        # The B-spline map's bending-energy penalty, evaluated on several threads, crashes elastix (a segmentation
        # fault inside _ElastixPython, itk-elastix 0.25.4, 128^3 images, 2 threads; 1 thread or no penalty run).
        # Its metrics then run on one thread; the rest of elastix (pyramids, sampling, resampling) keeps them all.
        pm["UseMultiThreadingForMetrics"] = ["false"]
        if iterations is not None:
            pm["MaximumNumberOfIterations"] = [str(iterations)]
        po.AddParameterMap(pm)
    return po


def elastix_bspline(
    atlas_image: np.ndarray,
    threads: int,
    spacing=fields.CANONICAL_SPACING,
    resolutions: int = 4,
    iterations: int | None = None,
) -> FieldFn:
    import itk

    pin_itk_threads(threads)
    moving = fields.to_itk(atlas_image, spacing)
    parameters = elastix_parameter_object(resolutions, iterations)

    def register(fixed_image: np.ndarray) -> np.ndarray:
        fixed = fields.to_itk(fixed_image, spacing)
        _, result = itk.elastix_registration_method(
            fixed, moving, parameter_object=parameters, log_to_console=False, number_of_threads=threads
        )
        return fields.elastix_parameters_to_field(moving, result, spacing)

    return register


def _shrunk(image, factor: int):
    """``image`` smoothed (sigma: half the factor, in voxels) and resampled onto a grid ``factor`` times coarser."""
    import SimpleITK as sitk

    if factor == 1:
        return image
    sigmas = [0.5 * factor * s for s in image.GetSpacing()]
    smooth = sitk.SmoothingRecursiveGaussian(image, sigmas)
    size = [max(1, round(n / factor)) for n in image.GetSize()]
    spacing = [n * s / m for n, s, m in zip(image.GetSize(), image.GetSpacing(), size, strict=True)]
    origin = [o + 0.5 * (sp - s) for o, s, sp in zip(image.GetOrigin(), image.GetSpacing(), spacing, strict=True)]
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, image.GetDirection())


def simpleitk_demons(
    atlas_image: np.ndarray,
    threads: int,
    spacing=fields.CANONICAL_SPACING,
    affine_iterations: int = 200,
    demons_iterations: tuple[int, ...] = (40, 20, 10),
    shrink_factors: tuple[int, ...] = (4, 2, 1),
    sigma_mm: float = 4.0,
) -> FieldFn:
    """A SimpleITK user's affine (centre of mass initialised, Mattes MI on 5 % random samples, regular-step
    gradient descent, levels 4-2-1) then multi-resolution diffeomorphic demons on the affinely resampled atlas
    (histogram matched; the field smoothed with ``sigma_mm``), as in SimpleITK's registration notebooks."""
    import SimpleITK as sitk

    moving = fields.to_sitk(atlas_image, spacing)

    def affine_stage(fixed) -> sitk.Transform:
        initial = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.05, SEED)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0, minStep=1e-4, numberOfIterations=affine_iterations, relaxationFactor=0.5
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(initial, inPlace=False)
        reg.SetNumberOfThreads(threads)
        return reg.Execute(fixed, moving)

    def register(fixed_image: np.ndarray) -> np.ndarray:
        fixed = fields.to_sitk(fixed_image, spacing)
        affine = affine_stage(fixed)
        warped = sitk.Resample(moving, fixed, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        warped = sitk.HistogramMatching(warped, fixed, 256, 7, True)
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetStandardDeviations(sigma_mm)  # physical units (UseImageSpacing)
        demons.SetNumberOfThreads(threads)
        displacement = None
        for factor, iterations in zip(shrink_factors, demons_iterations, strict=True):
            f_level, m_level = _shrunk(fixed, factor), _shrunk(warped, factor)
            if displacement is None:
                displacement = sitk.Image(f_level.GetSize(), sitk.sitkVectorFloat64, 3)
                displacement.CopyInformation(f_level)
            else:  # the coarser field (mm, physical) onto this level's grid
                displacement = sitk.Resample(displacement, f_level, sitk.Transform(), sitk.sitkLinear, 0.0)
            demons.SetNumberOfIterations(iterations)
            displacement = demons.Execute(f_level, m_level, displacement)
        dense = sitk.DisplacementFieldTransform(sitk.Cast(displacement, sitk.sitkVectorFloat64))
        composite = sitk.CompositeTransform([affine, dense])  # the last one added first: T(x) = A(x + d(x))
        return fields.sitk_transform_to_field(composite, fixed_image.shape, spacing)

    return register


# --- oarmorph and the baselines ---------------------------------------------------------------------------------


def oarmorph_onnx(register: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], affine_only: bool) -> FieldFn:
    """The model's composed field (or its affine stage's) from an ``OnnxRegister``-like callable."""

    def run(fixed_image: np.ndarray) -> np.ndarray:
        field, affine = register(fixed_image)
        return affine if affine_only else field

    return run


def oarmorph_torch_gpu(model_dir: Path, atlas_image: np.ndarray) -> FieldFn:
    """The same weights (checkpoint.pt) on PyTorch on the GPU; numpy in, numpy out, synchronised."""
    import torch

    from training.inference import load_inference_cascade

    model, _, _ = load_inference_cascade(model_dir / "checkpoint.pt", atlas_image=atlas_image)
    model = model.eval().cuda()

    def run(fixed_image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(fixed_image, np.float32))[None, None].cuda()
        with torch.inference_mode():
            field, _ = model(x)
        torch.cuda.synchronize()
        return field[0].cpu().numpy()

    run(np.full(atlas_image.shape, 0.5, np.float32))  # warm-up: allocations and cuDNN algorithms
    return run


def no_registration(atlas_image: np.ndarray) -> FieldFn:
    """The zero field: the atlas's canonical voxel x onto the patient's voxel x. Each canonical window is placed on
    its own body (in-plane: the centroid of the head and upper neck; k: the vertex, or the scan's top) and the
    patient's is window-aligned onto the atlas, so this is the translation that makes the body centres coincide,
    nothing more. (A centroid of the whole canonical body does worse: OpenKBP blanks all but a region around the
    treatment, and on pt_202 that centroid lies 26 mm behind the head's.)"""

    def run(fixed_image: np.ndarray) -> np.ndarray:
        return np.zeros((3, *fixed_image.shape), np.float32)

    return run


def build(key: str, atlas_image: np.ndarray, threads: int, onnx_register=None, model_dir: Path | None = None):
    """The adapter of method ``key`` for one atlas (``onnx_register``: the loaded model's ``OnnxRegister``)."""
    if key == "oarmorph":
        return oarmorph_onnx(onnx_register, affine_only=False)
    if key == "affine":
        return oarmorph_onnx(onnx_register, affine_only=True)
    if key == "oarmorph-gpu":
        return oarmorph_torch_gpu(model_dir, atlas_image)
    if key == "ants":
        return ants_syn(atlas_image)
    if key == "elastix":
        return elastix_bspline(atlas_image, threads)
    if key == "simpleitk":
        return simpleitk_demons(atlas_image, threads)
    if key == "none":
        return no_registration(atlas_image)
    raise KeyError(f"unknown method {key!r} (known: {', '.join(METHODS)})")
