"""The checks every op of ``torch.ops.dspark`` must pass, run on every sample call of
``op_registry.SAMPLES``: opcheck, torch.compile(fullgraph=True) equals eager, CUDA-graph
capture and replay with new tensor contents, CPU vs CUDA, non-contiguous inputs, R = 0, and
arguments on another device. The op families' own test files test semantics only.
"""

from __future__ import annotations

import inspect
import os
import pydoc

import pytest
import torch

import dspark_ops

from helpers import requires_cuda
from op_registry import SAMPLES, Sample, library_ops, registered_ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
by_sample = pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])

# Fake kernels do not check devices yet, so a call with one argument on 'meta' runs the fake
# kernel and returns uninitialised tensors instead of raising. Remove once they check.
FAKE_DEVICE_CHECKS = pytest.mark.xfail(strict=True, reason="fake kernel device checks: house-hardening")


def clone(args: tuple) -> tuple:
    return tuple(a.clone() if torch.is_tensor(a) else a for a in args)


def results(sample: Sample, args: tuple, out) -> list[torch.Tensor]:
    """What a call produced: its outputs, then the arguments it writes in place."""
    outs = [] if out is None else [out] if torch.is_tensor(out) else list(out)
    return outs + [args[i] for i in sample.mutates]


def call(sample: Sample, args: tuple) -> list[torch.Tensor]:
    return results(sample, args, sample.overload(*args))


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor], atol: float = 0.0, rtol: float = 0.0) -> None:
    """Integer and bool results equal; floating results within (atol, rtol), 0: bit for bit
    (NaN where the other has NaN)."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        tol = (atol, rtol) if g.is_floating_point() else (0.0, 0.0)
        torch.testing.assert_close(g.cpu(), w.cpu(), atol=tol[0], rtol=tol[1], equal_nan=True,
                                   msg=lambda m, i=i: f"result {i}: {m}")


# ----------------------------------------------------------------------------- the registry itself


def test_every_op_has_samples():
    """A new op cannot be forgotten: every op of the library has a sample call here."""
    assert library_ops() == registered_ops(), "add sample calls for every op to tests/op_registry.py"


@pytest.mark.parametrize("op", sorted(library_ops()))
def test_every_op_is_documented(op):
    """``help(torch.ops.dspark.<op>)`` shows the op's schema and its wrapper's docstring (not
    torch's generic text), and docs/ops.md has a section for it."""
    packet = getattr(torch.ops.dspark, op)
    schema = str(packet.default._schema)
    wrapper = getattr(dspark_ops, op, None)
    for target in (packet, packet.default):
        assert target.__doc__ and target.__doc__.startswith(schema), f"{op}: decorate its wrapper with @documented"
        assert wrapper is None or inspect.cleandoc(wrapper.__doc__) in target.__doc__
        assert schema in pydoc.render_doc(target, renderer=pydoc.plaintext)
    with open(os.path.join(REPO, "docs", "ops.md"), encoding="utf-8") as f:
        headings = "".join(line for line in f if line.startswith("#"))
    assert f"`{op}`" in headings, f"docs/ops.md: no section for {op}"


# ----------------------------------------------------------------------------- torch integration


@by_sample
def test_opcheck(sample, device):
    torch.library.opcheck(sample.overload, sample.build(device, sample.requests, 0))


@by_sample
def test_compile_fullgraph_equals_eager(sample, device):
    args = sample.build(device, sample.requests, 0)
    want = call(sample, clone(args))
    torch._dynamo.reset()  # one fresh compilation per sample, never the recompile limit
    compiled = torch.compile(lambda *a: sample.overload(*a), fullgraph=True,
                             backend="inductor" if device == "cuda" else "aot_eager")
    compiled_args = clone(args)
    assert_same(results(sample, compiled_args, compiled(*compiled_args)), want)


@requires_cuda
@pytest.mark.skipif(os.environ.get("DSPARK_CHECK") == "1", reason="value checks sync with the host: not capturable")
@by_sample
def test_cuda_graph_replays_with_new_contents(sample):
    args = sample.build("cuda", sample.requests, 0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture stream (lazy kernel attributes)
        sample.overload(*clone(args))
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = results(sample, args, sample.overload(*args))
    new = sample.build("cuda", sample.requests, 1)
    for a, b in zip(args, new):
        if torch.is_tensor(a):
            a.copy_(b)
    graph.replay()
    torch.cuda.synchronize()
    want = call(sample, new)
    assert any(not torch.equal(a, b) for a, b in zip(want, call(sample, sample.build("cuda", sample.requests, 0))))
    assert_same(captured, want)


@requires_cuda
@by_sample
def test_cpu_and_cuda_agree(sample):
    cpu = call(sample, sample.build("cpu", sample.requests, 0))
    gpu = call(sample, sample.build("cuda", sample.requests, 0))
    assert_same(gpu, cpu, sample.atol, sample.rtol)


# ----------------------------------------------------------------------------- inputs


def non_contiguous(t: torch.Tensor, keep_last_dim: bool) -> torch.Tensor:
    """The same values in a non-contiguous view: every other element of a wider tensor along
    the last dimension, or, for in-place arguments (whose last dimension must stay
    contiguous), rows padded by one element."""
    if t.dim() == 0 or t.numel() == 0:
        return t
    if keep_last_dim and t.dim() > 1:
        wide = t.new_zeros(*t.shape[:-1], t.shape[-1] + 1)[..., : t.shape[-1]]
    else:
        wide = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])[..., ::2]
    return wide.copy_(t)


@by_sample
def test_non_contiguous_inputs(sample, device):
    args = sample.build(device, sample.requests, 0)
    strided = tuple(non_contiguous(a, i in sample.mutates) if torch.is_tensor(a) else a for i, a in enumerate(args))
    assert any(torch.is_tensor(a) and not a.is_contiguous() for a in strided)
    assert_same(call(sample, strided), call(sample, clone(args)), sample.atol, sample.rtol)


@by_sample
def test_empty_batch(sample, device):
    """R = 0 is valid: outputs shaped as the fake kernel says, on the device, empty."""
    args = sample.build(device, 0, 0)
    got = call(sample, args)
    want = call(sample, tuple(a.to("meta") if torch.is_tensor(a) else a for a in args))
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype and g.device.type == device
        assert g.dim() == 0 or g.numel() == 0


def argument_positions(sample: Sample) -> list[int]:
    return [i for i, a in enumerate(sample.build("cpu", sample.requests, 0)) if torch.is_tensor(a)]


def each_argument(sample: Sample):
    return [pytest.param(sample, i, id=f"{sample.id}-{sample.overload._schema.arguments[i].name}")
            for i in argument_positions(sample)]


ONE_ARGUMENT_EACH = [p for s in SAMPLES for p in each_argument(s)]


@FAKE_DEVICE_CHECKS
@pytest.mark.parametrize("sample,position", ONE_ARGUMENT_EACH)
def test_argument_on_meta_raises(sample, position, device):
    args = list(sample.build(device, sample.requests, 0))
    args[position] = args[position].to("meta")
    with pytest.raises(RuntimeError):
        sample.overload(*args)


@requires_cuda
@pytest.mark.parametrize("sample,position", ONE_ARGUMENT_EACH)
@pytest.mark.parametrize("home,other", [("cuda", "cpu"), ("cpu", "cuda")])
def test_argument_on_another_device_raises(sample, position, home, other):
    args = list(sample.build(home, sample.requests, 0))
    args[position] = args[position].to(other)
    with pytest.raises(RuntimeError):
        sample.overload(*args)
