"""The HTTP face: ``api`` (FastAPI routes and service functions) and ``client`` (the Python client and
``saliency-audit submit``). Neither imports torch; both build on ``workers.core``, and the API hands jobs to
``workers.worker``."""
