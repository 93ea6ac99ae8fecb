"""The worker: Celery tasks, the audit process a job runs in, how jobs are dispatched, leases, fan-out of
an audit's units and the sweeper that recovers lost jobs."""
