"""DICOM UIDs for what oarmorph creates.

``2.25.<uuid>`` UIDs need no registered root. When ``seed`` material is given the UID is derived from it
(reproducible outputs, e.g. the phantom generator's "same seed, same bytes"); otherwise it is random.
"""

from __future__ import annotations

import hashlib
import uuid


def new_uid(*seed: object) -> str:
    if seed:
        digest = hashlib.sha256("|".join(map(str, seed)).encode()).digest()[:16]
        value = uuid.UUID(bytes=digest).int
    else:
        value = uuid.uuid4().int
    return f"2.25.{value}"
