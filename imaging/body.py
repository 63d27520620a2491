"""The patient's body in a CT: what is not air, couch or headrest.

Used to place the canonical window (on a coarse grid) and to give an External contour. Threshold, a small
opening that detaches the couch and immobilisation devices, the largest connected component, and holes
(airways, lungs) filled slice by slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def body_mask(hu: np.ndarray, threshold_hu: float = -400.0, fill_holes: bool = False) -> np.ndarray:
    """Boolean body mask of an HU array ``[k, j, i]``."""
    body = hu > threshold_hu
    body = ndimage.binary_opening(body, structure=ndimage.generate_binary_structure(3, 1), iterations=1)
    labels, n = ndimage.label(body)
    if n == 0:
        return body
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    if fill_holes:
        for k in np.flatnonzero(body.any(axis=(1, 2))):
            body[k] = ndimage.binary_fill_holes(body[k])
    return body
