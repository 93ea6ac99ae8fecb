"""Background side of the service: the audit engine (``workers.engine``) and the command line."""
