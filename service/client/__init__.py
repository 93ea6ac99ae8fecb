"""The Python client of the API (``http``) and ``saliency-audit submit`` built on it (``submit``)."""
