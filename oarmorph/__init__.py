"""oarmorph: atlas-based head-and-neck OAR contouring by semi-supervised diffeomorphic registration."""

__version__ = "0.1.0"
