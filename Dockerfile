# oarmorph service image: the FastAPI API and the Celery worker, torch-free (ONNX Runtime runs the model).
#   GPU (default): docker build -t oarmorph .            CUDA 13 runtime + cuDNN, onnxruntime-gpu 1.31
#   CPU only:      docker build -t oarmorph:cpu --build-arg BASE_IMAGE=python:3.12-slim-bookworm --build-arg ORT=onnxruntime .
# Two stages: the build stage installs the project into /opt/venv; the runtime stage copies that venv alone (no
# pip cache, no build files) onto the same base. training/ and the torch extra never enter the image
# (.dockerignore, and the install names only the service extra). Models are mounted (OARMORPH_BUNDLES_DIR).
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${BASE_IMAGE} AS build
ARG ORT=onnxruntime-gpu==1.31.*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The CUDA base images carry no Python: bring one (and venv) from the distribution.
RUN if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY oarmorph ./oarmorph
COPY imaging ./imaging
COPY anatomy ./anatomy
COPY phantom ./phantom
COPY pipeline ./pipeline
COPY model_export ./model_export
COPY service ./service
RUN pip install ".[service]" \
 && if [ "${ORT}" != "onnxruntime" ]; then pip uninstall -y onnxruntime && pip install "${ORT}"; fi \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OARMORPH_DATA_DIR=/var/lib/oarmorph \
    OARMORPH_BUNDLES_DIR=/models \
    PATH=/opt/venv/bin:$PATH
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --create-home --uid 10001 oarmorph \
 && mkdir -p /var/lib/oarmorph /models \
 && chown oarmorph /var/lib/oarmorph
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY bundles/phantom ./bundles/phantom
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "service.app:app", "--host", "0.0.0.0", "--port", "8000"]
