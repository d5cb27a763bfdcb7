"""clipfed: CLIP-guided backdoor defense for federated learning, on Flower."""

__version__ = "0.2.0"
