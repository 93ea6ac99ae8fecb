"""The saliency-audit command: run and demo audits in-process, serve the API, manage keys, submit."""
