"""The paper's losses (supplement D): mutual information (Eq. 18-19), OAR similarity (Eq. 20), the KL term of a
dense diffeomorphic block (Eq. 21), gradient smoothness (Eq. 22) and MMD (Eq. 16) for the InfoVAE baseline.

Every loss is a quantity to minimise (MI enters as its negative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mutual_information(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    weight: torch.Tensor | None = None,
    bins: int = 32,
    samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mutual information of two images in [0, 1] with Parzen (Gaussian) windows, per batch item, then averaged.

    32 bins with centres spread over [0, 1]; the Gaussian window's sigma is half a bin width. ``weight`` (same
    shape, in [0, 1]) counts a voxel only where both images hold data (OpenKBP's blanked regions are not air).
    ``samples`` draws that many voxels at random per step instead of all (cheap on a CPU, unbiased).
    """
    b = fixed.shape[0]
    f = fixed.reshape(b, -1)
    m = moving.reshape(b, -1)
    w = torch.ones_like(f) if weight is None else weight.reshape(b, -1)
    if samples is not None and samples < f.shape[1]:
        idx = torch.randint(0, f.shape[1], (samples,), device=f.device, generator=generator)
        f, m, w = f[:, idx], m[:, idx], w[:, idx]
    centres = torch.linspace(0.0, 1.0, bins, device=f.device, dtype=f.dtype)
    sigma = 0.5 * (centres[1] - centres[0])
    pf = torch.exp(-0.5 * ((f.clamp(0, 1)[..., None] - centres) / sigma) ** 2)  # [b, n, bins]
    pm = torch.exp(-0.5 * ((m.clamp(0, 1)[..., None] - centres) / sigma) ** 2)
    pf = pf / pf.sum(-1, keepdim=True).clamp_min(1e-12) * w[..., None]
    pm = pm / pm.sum(-1, keepdim=True).clamp_min(1e-12)
    joint = torch.einsum("bni,bnj->bij", pf, pm)
    joint = joint / joint.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    p_f = joint.sum(2, keepdim=True)
    p_m = joint.sum(1, keepdim=True)
    mi = (joint * torch.log((joint + 1e-10) / (p_f * p_m + 1e-10))).sum(dim=(1, 2))
    return mi.mean()


def mi_loss(fixed, moving, weight=None, **kwargs) -> torch.Tensor:
    return -mutual_information(fixed, moving, weight, **kwargs)


def segmentation_mse(warped: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Eq. 20: mean squared error between warped atlas OARs and the patient's, over the OARs the patient has.

    ``warped``, ``target``: [b, n_oars, k, j, i]; ``present``: [b, n_oars] of 0/1. A batch without any labelled
    OAR contributes 0.
    """
    per_channel = ((warped - target) ** 2).mean(dim=(2, 3, 4))  # [b, n_oars]
    count = present.sum()
    return (per_channel * present).sum() / count.clamp_min(1.0)


def segmentation_soft_dice(
    warped: torch.Tensor, target: torch.Tensor, present: torch.Tensor, eps: float = 1.0
) -> torch.Tensor:
    """1 - soft Dice per OAR, averaged over the OARs the patient has (a CPU-recipe alternative to Eq. 20).

    Why: Eq. 20's voxel mean is dominated by background, so on a small OAR it is ~1e-4 and even at weight 100
    the image term decides alone; the Dice form weighs every OAR by its own size, which is what the evaluation
    measures. ``eps`` (in voxels) keeps an empty warped mask on an empty target at 0.
    """
    dims = (2, 3, 4)
    inter = (warped * target).sum(dim=dims)
    sums = warped.sum(dim=dims) + target.sum(dim=dims)
    per_channel = 1.0 - (2.0 * inter + eps) / (sums + eps)  # [b, n_oars]
    count = present.sum()
    return (per_channel * present).sum() / count.clamp_min(1.0)


def _degree(shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """Number of 6-neighbours of each voxel (6 inside, fewer on the faces): the D of Eq. 21."""
    ones = torch.ones(1, 1, *shape, device=device, dtype=dtype)
    kernel = torch.zeros(1, 1, 3, 3, 3, device=device, dtype=dtype)
    kernel[0, 0, 1, 1, 0] = kernel[0, 0, 1, 1, 2] = 1
    kernel[0, 0, 1, 0, 1] = kernel[0, 0, 1, 2, 1] = 1
    kernel[0, 0, 0, 1, 1] = kernel[0, 0, 2, 1, 1] = 1
    return F.conv3d(ones, kernel, padding=1)


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor, prior_lambda: float) -> torch.Tensor:
    """Eq. 21, the diffeomorphic-VoxelMorph KL with a neighbourhood-precision prior (precision lambda * L, L the
    graph Laplacian of the 6-neighbourhood), for a posterior with diagonal covariance.

        1/2 [ tr(lambda D Sigma_q - log Sigma_q) + mu^T Lambda mu ]

    scaled as VoxelMorph's implementation (sigma term: ndims/2 times its voxel mean; mean term: lambda/2 times half
    the mean squared neighbour difference per dimension), minus its constant so that it is 0 at mu = 0,
    Sigma_q = (lambda D)^-1 (the prior's best diagonal fit) and positive anywhere else. The constant changes no
    gradient.
    """
    ndims = mean.shape[1]
    d = _degree(mean.shape[2:], mean.device, mean.dtype)
    lam_d = prior_lambda * d
    sigma_term = lam_d * torch.exp(log_var) - log_var - 1.0 - torch.log(lam_d)
    # mu^T Lambda mu = lambda * sum over neighbour pairs of (mu_a - mu_b)^2, per voxel and channel on average
    prec = 0.5 * sum(((mean.diff(dim=a)) ** 2).mean() for a in range(2, 2 + ndims)) / ndims
    return 0.5 * ndims * sigma_term.mean() + 0.5 * prior_lambda * prec


def gradient_smoothness(field: torch.Tensor) -> torch.Tensor:
    """Eq. 22: mean squared forward difference of a displacement field (the non-generative baselines)."""
    return sum((field.diff(dim=a) ** 2).mean() for a in range(2, field.dim())) / (field.dim() - 2)


def mmd(z: torch.Tensor, samples: int = 2048, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 16: maximum mean discrepancy between velocity samples and a unit Gaussian (InfoVAE), Gaussian kernel.

    ``z`` [b, c, ...] is read as voxel-wise c-dimensional samples; ``samples`` of them are drawn per step.
    """
    c = z.shape[1]
    flat = z.permute(0, *range(2, z.dim()), 1).reshape(-1, c)
    idx = torch.randint(0, flat.shape[0], (min(samples, flat.shape[0]),), device=z.device, generator=generator)
    q = flat[idx]
    p = torch.randn(q.shape, device=z.device, dtype=z.dtype, generator=generator)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(torch.cdist(a, b) ** 2) / (2.0 * c))

    return kernel(q, q).mean() + kernel(p, p).mean() - 2.0 * kernel(q, p).mean()
