"""Shared pytest setup: markers and the GPU skip."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the lent GPU machine with -m gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not any keyword (a folder named gpu)
            item.add_marker(skip_gpu)
