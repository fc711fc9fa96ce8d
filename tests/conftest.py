"""Shared test fixtures: every op test runs on CPU, and on CUDA when a GPU is present."""

import pytest

import dspark_ops

from helpers import DEVICES, requires_cuda


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not dspark_ops.has_cuda_kernels():
        pytest.fail("a GPU is present but dspark_ops was built without its CUDA kernels")
    return request.param


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    # `-k cuda` must select every CUDA test (bench/gpu_session.sh): tests on the "cuda" device
    # parameter or in a *_cuda.py file match by name; those marked requires_cuda get the `cuda`
    # marker here, whose name -k matches too.
    for item in items:
        if any(m == requires_cuda.mark for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)
