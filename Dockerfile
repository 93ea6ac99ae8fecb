# syntax=docker/dockerfile:1
# Two targets:
#   docker build --target cpu -t saliency-audit:cpu .   (default; CPU wheel of torch, small)
#   docker build --target gpu -t saliency-audit:gpu .   (CUDA build of torch, for GPU workers)
# Workers load model artifacts that are programs (TorchScript, torch.export): run them without secrets
# and without network access beyond the broker (see README, "Security").

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 audit
WORKDIR /app

FROM base AS cpu
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
RUN pip install .
USER audit
ENTRYPOINT ["saliency-audit"]
CMD ["--help"]

FROM base AS gpu
# The CUDA build of torch on purpose: this image runs where a GPU is.
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
RUN pip install .
USER audit
ENTRYPOINT ["saliency-audit"]
CMD ["--help"]
