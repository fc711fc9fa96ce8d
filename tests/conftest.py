"""Shared test fixtures: every op test runs on CPU, and on CUDA when a GPU is present."""

import pytest

import dspark_ops

from helpers import DEVICES


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not dspark_ops.has_cuda_kernels():
        pytest.fail("a GPU is present but dspark_ops was built without its CUDA kernels")
    return request.param
