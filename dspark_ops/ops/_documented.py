"""``help(torch.ops.dspark.<op>)`` shows the op's own documentation.

torch builds ``torch.ops.dspark.<op>`` (an ``OpOverloadPacket``) and its overloads from the
C++ schema alone, so ``help()`` on them prints torch's generic class text. The Python wrapper
of each op carries the documentation; :func:`documented` copies it onto the packet and its
``default`` overload, after the schema, once at import.
"""

from __future__ import annotations

import inspect
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def documented(wrapper: F) -> F:
    """Decorator for the wrapper of the op of the same name in ``torch.ops.dspark``."""
    packet = getattr(torch.ops.dspark, wrapper.__name__)
    doc = (
        f"{packet.default._schema}\n\n{inspect.cleandoc(wrapper.__doc__)}\n\n"
        f"Python wrapper: {wrapper.__module__}.{wrapper.__qualname__}. All ops: docs/ops.md."
    )
    # Instance attributes: pydoc and inspect.getdoc read them before the class's docstring.
    packet.__doc__ = doc
    packet.default.__doc__ = doc
    return wrapper
