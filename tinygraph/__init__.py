"""tinygraph: a small autodiff engine whose computational graph is a first-class object.

    import tinygraph as tg
    x = tg.tensor([[1.0, 2.0]], requires_grad=True, name="x")
    W = tg.randn(2, 3, requires_grad=True, name="W")
    y = tg.tanh(x @ W).sum()
    y.backward()
"""
from . import tensor as _tensor_module
from .backend import cuda_available, keep_freed_memory

keep_freed_memory()  # reuse freed buffers: see its docstring (TINYGRAPH_SYSTEM_MALLOC=1 opts out)
from .graph import (Graph, Node, current_scope, current_timestep, decomposed, enable_grad,
                    is_grad_enabled, no_grad, scope, timestep)
from .tensor import Tensor

_tensor_module._install_methods()

from .ops import (abs, add, astype, broadcast_to, clip, concat, div, exp, getitem, log,  # noqa: E402
                  log_softmax, matmul, max, maximum, mean, min, minimum, mul, neg, pow,
                  relu, reshape, sigmoid, sign, softmax, split, sqrt, stack, sub, sum, sum_to,
                  pick, swapaxes, take, take_along_axis, tanh, to_device, transpose, where)
from .autodiff import AnomalyError, backward, detect_anomaly, grad  # noqa: E402
from .creation import (arange, eye, full, generator, get_default_dtype, manual_seed,  # noqa: E402
                       ones, ones_like, rand, randn, set_default_dtype, tensor, zeros,
                       zeros_like)
from .losses import cross_entropy, mse_loss, nll_loss  # noqa: E402
from .checks import GradcheckError, gradcheck  # noqa: E402
# eager, not lazy: importing the submodule tinygraph.trace (as tests and users do)
# would otherwise leave the module, not the function, at tg.trace
from .trace import trace, traced_step  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    # engine submodules load on first use; tinygraph.models and tinygraph.viz sit
    # above the engine and are imported by name, never from here
    "nn": ("tinygraph.nn", None),
    "optim": ("tinygraph.optim", None),
    "bptt": ("tinygraph.bptt", None),
    "stepper": ("tinygraph.stepper", None),
    "data": ("tinygraph.data", None),
    "save": ("tinygraph.serialization", "save"),
    "load": ("tinygraph.serialization", "load"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tinygraph' has no attribute {name!r}")
