"""HTTP face of the audit service. It must never import torch: the engine lives in ``workers``."""
