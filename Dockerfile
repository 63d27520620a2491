# oarmorph service image: FastAPI API and Celery worker, torch-free (ONNX Runtime runs the model).
#   CPU:  docker build -t oarmorph .
#   GPU:  docker build -t oarmorph:gpu --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 \
#                      --build-arg EXTRAS=service,gpu .
# training/ and the torch extra never enter the image (.dockerignore, and the install below names its extras).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG EXTRAS=service
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OARMORPH_DATA_DIR=/var/lib/oarmorph

# The CUDA base images carry no Python: bring one (and venv) from the distribution.
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY oarmorph ./oarmorph
COPY imaging ./imaging
COPY anatomy ./anatomy
COPY phantom ./phantom
COPY model_export ./model_export
COPY service ./service
RUN pip install ".[${EXTRAS}]" \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

RUN useradd --create-home --uid 10001 oarmorph \
 && mkdir -p /var/lib/oarmorph \
 && chown oarmorph /var/lib/oarmorph
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "service.app:app", "--host", "0.0.0.0", "--port", "8000"]
