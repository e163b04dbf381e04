"""Accuracy verification: llama.cpp-style fidelity against a reference, layer sensitivity, GSM8K.

Submodules import torch lazily where they can, so `mxmix eval --help` stays fast.
"""
