"""Logging of the API and the worker: one line per event, naming jobs and API key ids, never a patient.

What may appear in a log line: job ids, API key ids, bundle names, error codes, stage names, counts, seconds.
What never does: anything read from a DICOM file (names, IDs, dates, UIDs, descriptions), uploaded file names
(stored files are renamed), callback URLs (they may carry tokens). The typed errors' sentences go to the job
document, not to the log. pydicom's own warnings quote element values, so the DICOM reader withholds them
(``imaging.dicom_ct``); a test captures every log line of a whole job and looks for the patient's attributes.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_oarmorph", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._oarmorph = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs the URL of every request (callback URLs)
