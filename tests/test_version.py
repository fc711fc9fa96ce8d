"""The version lives in one place, and the library refuses to load into a torch release other
than the one it was built against (an ImportError that names both versions)."""

from __future__ import annotations

import os
import re

import pytest
import torch

import dspark_ops
from dspark_ops import _library


def test_version_in_one_place():
    here = os.path.dirname(dspark_ops.__file__)
    with open(os.path.join(here, "_version.py")) as f:
        # The pattern of scikit-build-core's regex metadata provider (pyproject.toml).
        m = re.search(r"""(?im)^(__version__|VERSION) *= *(['"])v?(?P<value>.+?)\2""", f.read())
    assert m and m.group("value") == dspark_ops.__version__


@pytest.mark.parametrize("built,running", [("2.14.1+cu130", "2.14.1+cu130"), ("2.14.1+cu130", "2.14.1"),
                                           ("2.11.0", "2.11.0+cpu")])
def test_same_release_loads(built, running):
    _library.check_torch_version(built, running)


@pytest.mark.parametrize("built,running", [("2.14.1+cu130", "2.11.0+cu130"), ("2.11.0", "2.11.1"),
                                           ("2.14.0.dev20261101", "2.14.0")])
def test_other_release_is_an_import_error(built, running):
    with pytest.raises(ImportError, match=re.escape(built) + ".*" + re.escape(running)):
        _library.check_torch_version(built, running)


def test_recorded_build_version_is_the_running_torch():
    assert os.path.exists(_library.BUILD_TORCH_VERSION_PATH), "CMake writes _C.torch_version next to _C.so"
    with open(_library.BUILD_TORCH_VERSION_PATH) as f:
        assert _library._release(f.read().strip()) == _library._release(torch.__version__)
