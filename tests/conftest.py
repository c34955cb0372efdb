"""Shared test helpers: a `gpu` skip marker and float64 random inputs.

Other test files may use these; keep this file minimal.
"""
import numpy as np
import pytest

import tinygraph as tg

requires_gpu = pytest.mark.skipif(
    not tg.cuda_available(), reason="needs CuPy and a CUDA device (pip install 'tinygraph[gpu]')"
)

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, requires_gpu])]


@pytest.fixture
def rng():
    """A seeded NumPy generator, fresh for every test."""
    return np.random.default_rng(0)


@pytest.fixture
def randn64(rng):
    """randn64(*shape, requires_grad=True, device='cpu') -> a float64 Tensor."""
    def make(*shape, requires_grad=True, device="cpu", name=None):
        return tg.tensor(rng.standard_normal(shape), dtype="float64", device=device,
                         requires_grad=requires_grad, name=name)
    return make
