# syntax=docker/dockerfile:1
#
# SafeSpot images, one Dockerfile, two targets:
#
#   docker build --target api    -t safespot-api    .   # FastAPI front end, no torch (small, starts fast)
#   docker build --target worker -t safespot-worker .   # RQ worker + trainer sidecar, with torch (CUDA-ready)
#
# Stages: base -> api-build -> api, base -> worker-build -> worker.  The *-build
# stages install into a virtual environment at /opt/venv that the final stages
# copy, so no build tooling, source tree or pip cache ends up in the images.
# No secret is baked in: API keys, Redis passwords etc. come from the
# environment at run time (docker-compose .env file, Kubernetes Secret).

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------- base
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SAFESPOT_CHECKPOINT_DIR=/data/checkpoints \
    SAFESPOT_DATA_DIR=/data/work

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify it and
# volumes can be prepared with the right owner (fsGroup 10001).  The data
# directories exist in the image, owned by that user, so that a fresh named
# Docker volume mounted there inherits the ownership.
RUN groupadd --system --gid 10001 safespot \
 && useradd --system --uid 10001 --gid safespot --create-home --home-dir /home/safespot \
        --shell /usr/sbin/nologin safespot \
 && mkdir -p /data/checkpoints /data/work \
 && chown -R safespot:safespot /data

WORKDIR /app

# --------------------------------------------------------------- api (build)
FROM base AS api-build
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY safespot ./safespot
COPY models ./models
COPY training ./training
COPY worker ./worker
COPY service ./service
COPY safespot_cli ./safespot_cli
# Core dependencies only (pyproject's [project.dependencies]): the API talks to
# the workers through Redis and never needs the compute extra.
# hadolint ignore=DL3013
RUN pip install .

# ---------------------------------------------------------------------- api
FROM base AS api
COPY --from=api-build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["safespot", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ------------------------------------------------------------ worker (build)
FROM base AS worker-build
# torch's default Linux x86_64 wheels on PyPI bundle CUDA (the nvidia-* wheels),
# so this image runs on a GPU host with only the NVIDIA driver and the NVIDIA
# Container Toolkit installed; no nvidia/cuda base image is needed.  For a much
# smaller CPU-only image build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (or a cuXYZ index to pick a CUDA version).  If you prefer an nvidia/cuda
# runtime base (for example to share CUDA libraries with other tools), pass
# --build-arg PYTHON_IMAGE=<an image with Python 3.11 on top of
# nvidia/cuda:<version>-cudnn-runtime-ubuntu22.04>; the stages stay the same.
ARG TORCH_INDEX_URL=""
# Keep these equal to the pins in pyproject.toml's `torch` extra (a test checks).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN python -m venv /opt/venv \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" \
            "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"; \
    fi
COPY pyproject.toml README.md ./
COPY safespot ./safespot
COPY models ./models
COPY training ./training
COPY worker ./worker
COPY service ./service
COPY safespot_cli ./safespot_cli
# hadolint ignore=DL3013
RUN pip install ".[torch]"

# ------------------------------------------------------------------- worker
FROM base AS worker
COPY --from=worker-build /opt/venv /opt/venv
# Ask the NVIDIA runtime for compute libraries when a GPU is granted.  Do NOT
# set NVIDIA_VISIBLE_DEVICES=all here: it would hand every GPU to containers
# that did not request one.  Caches go to /tmp so a read-only root works.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SAFESPOT_METRICS_PORT=9100 \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 9100
# Liveness of the worker process via its Prometheus endpoint.  The start period
# covers loading the active model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('SAFESPOT_METRICS_PORT', '9100'), timeout=4)"]
# The trainer sidecar runs the same image with:
#   safespot worker --queues safespot-train
CMD ["safespot", "worker"]
