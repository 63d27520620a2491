"""FastAPI app, Celery worker and job store of the oarmorph service (torch-free)."""
