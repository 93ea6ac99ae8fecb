"""Everything that runs beside the HTTP face, one package per role; dependencies point one way:

``core`` (settings, problem catalog, request and report schemas, storage, job store) <- ``engine`` (the
audit: no FastAPI, no Celery) <- ``worker`` (Celery tasks, audit processes, dispatch, sweeper) <- ``cli``
(the saliency-audit command, which also serves ``service.api`` and submits through ``service.client``).
"""
