"""Sampling from our checkpoints and HF exports: decoding sessions, constraints, sampler, API (`api.py`)."""
