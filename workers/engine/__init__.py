"""The audit engine: sanity checks for saliency maps, runnable in-process without FastAPI or Celery.

Submodules import torch where they need it; what the HTTP service needs of an audit (its settings and
report schemas, reading model files and probes) lives in ``workers.core``, which never imports torch.
"""
