"""The audit engine: sanity checks for saliency maps, runnable in-process without FastAPI or Celery.

Submodules import torch where they need it; this package itself imports nothing, so torch-free callers
(the HTTP service) can import ``workers.core.report`` and ``workers.core.audit_settings`` alone.
"""
