"""The shared core: settings, the problem catalog, request and report schemas, storage and the job store.
It imports no other package of the project, and neither torch, FastAPI nor Celery."""
