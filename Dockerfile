# syntax=docker/dockerfile:1
# CPU image (default; CPU wheel of torch, small):
#   docker build -t saliency-audit:cpu .
# GPU image (CUDA build of torch from PyPI, on purpose, for GPU workers):
#   docker build --build-arg TORCH_INDEX= -t saliency-audit:gpu .
# Workers load model artifacts that are programs (TorchScript, torch.export): run them without secrets
# and without network access (see README, "Security").

FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 audit \
    && mkdir -p /var/lib/saliency-audit && chown audit /var/lib/saliency-audit
WORKDIR /app
RUN pip install torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
RUN pip install .
USER audit
ENV SALIENCY_DATA_DIR=/var/lib/saliency-audit
EXPOSE 8000
ENTRYPOINT ["saliency-audit"]
CMD ["--help"]
