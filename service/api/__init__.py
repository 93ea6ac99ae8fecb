"""The HTTP API: thin routes (``routes``) over service functions; it never imports torch."""
