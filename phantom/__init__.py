"""Synthetic head-and-neck phantoms with known ground truth (the demo atlas and the geometry test bed)."""
