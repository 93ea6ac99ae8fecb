"""The job store: the source of truth for jobs and artifacts (SQLAlchemy; SQLite or PostgreSQL).

Torch-free: the HTTP service and the workers both use it. Celery's result backend is not consulted.
"""
