"""oarmorph against the registration tools people use today, on the same patients, through the same pipeline.

Every method is a ``register(fixed canonical image) -> pull field`` in the contract of
``imaging.canonical.FIELD_CONVENTION`` (``methods.py``): the patient's canonical 128^3 image (window aligned onto
the atlas exactly as the oarmorph model was trained, ``pipeline.segment.align_window``) is the fixed image, the
atlas bundle's canonical image the moving one, and each tool's transform is turned into one displacement field in
canonical voxels (``fields.py``). The atlas OARs then go onto the patient's own grid through
``pipeline.segment.warp_atlas``, and Dice, HD95 and the Jacobian come from ``training.evaluate`` and
``imaging.metrics``: one warp and one set of metrics for every method (``run.py``). ``report.py`` writes
``docs/benchmarks.md`` and its plots. Command: ``oarmorph bench registration`` (``make bench``).
"""
