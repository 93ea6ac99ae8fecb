# syntax=docker/dockerfile:1
# Three images from one file, every version pinned (docker/constraints.txt pins the Python packages):
#   docker build --target api        -t saliency-audit-api:0.1.0 .         # HTTP API: no torch
#   docker build --target worker-cpu -t saliency-audit-worker:0.1.0 .      # Celery worker, CPU torch
#   docker build --target worker-gpu -t saliency-audit-worker-gpu:0.1.0 .  # Celery worker, CUDA torch
# All run as an unprivileged user and declare a healthcheck. Workers load model artifacts that are programs
# (TorchScript, torch.export): run them without secrets beyond the store's and without a way out (README,
# "Security").

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SALIENCY_DATA_DIR=/var/lib/saliency-audit SALIENCY_LOG_FORMAT=json
RUN useradd --create-home --uid 10001 audit \
    && mkdir -p /var/lib/saliency-audit && chown audit /var/lib/saliency-audit
WORKDIR /app
COPY docker/constraints.txt ./
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers

FROM base AS api
RUN pip install -c constraints.txt .
USER audit
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["saliency-audit"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker-cpu
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -c constraints.txt ".[engine]"
USER audit
# the worker answers a ping through the broker: alive and connected
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD celery -A workers.worker.celery_app inspect ping --timeout 10 -d "celery@$HOSTNAME" >/dev/null
ENTRYPOINT ["celery", "-A", "workers.worker.celery_app", "worker"]
CMD ["-Q", "audit-cpu", "-c", "1", "--loglevel", "INFO"]

FROM base AS worker-gpu
# PyPI's torch wheel is the CUDA build; it brings its CUDA libraries (the host needs only the driver)
RUN pip install torch==2.13.0 && pip install -c constraints.txt ".[engine]"
USER audit
ENV SALIENCY_AUDIT_MEMORY_LIMIT_MIB=0
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD celery -A workers.worker.celery_app inspect ping --timeout 10 -d "celery@$HOSTNAME" >/dev/null
ENTRYPOINT ["celery", "-A", "workers.worker.celery_app", "worker"]
CMD ["-Q", "audit-gpu", "-c", "1", "--loglevel", "INFO"]
