"""The shared counter-based generator (SPEC §2): known answers, twin agreement, CPU vs CUDA."""

import numpy as np
import pytest
import torch

import dspark_ops
from dspark_ops import reference

from helpers import requires_cuda
from stats import assert_distribution

# Random123's known-answer vectors for Philox4x32-10: (counter, key, output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_reference_philox_known_answers(counter, key, expected):
    out = reference.philox4x32_10([torch.tensor(c) for c in counter], [torch.tensor(k) for k in key])
    assert [int(x) for x in out] == list(expected)


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_kernel_philox_known_answers(counter, key, expected):
    # The op keys Philox by (lo32(seed), hi32(seed)) and counts (lo32(offset), hi32(offset),
    # purpose << 16 | position, index >> 2): choose arguments that produce the KAT words.
    seed = key[0] | (key[1] << 32)
    offset = counter[0] | (counter[1] << 32)
    seed_t = torch.tensor([seed - (1 << 64) if seed >= 1 << 63 else seed])
    offset_t = torch.tensor([offset - (1 << 64) if offset >= 1 << 63 else offset])
    index0 = counter[3] << 2
    purpose, position = counter[2] >> 16, counter[2] & 0xFFFF
    bits = reference.random_bits(seed_t, offset_t, purpose, position, torch.arange(index0, index0 + 4))
    assert [int(b) for b in bits.ravel()] == list(expected)
    if index0 == 0:  # the op enumerates indices from 0
        got = dspark_ops.random_bits(seed_t, offset_t, purpose, position, 4)
        assert [int(b) for b in got.ravel()] == list(expected)


def test_op_matches_reference_twin():
    seed = torch.tensor([0, 1, -1, 2**62 + 12345, -(2**40)])
    offset = torch.tensor([0, 7, -1, 2**33, 5])
    for purpose, position in [(1, 0), (2, 7), (5, 65535), (3, 70000)]:
        got = dspark_ops.random_bits(seed, offset, purpose, position, 37)
        want = reference.random_bits(seed[:, None], offset[:, None], purpose, position, torch.arange(37))
        assert torch.equal(got, want)


def test_streams_are_keyed():
    seed, offset = torch.tensor([3, 3, 4]), torch.tensor([9, 10, 9])
    a = dspark_ops.random_bits(seed, offset, 2, 1, 64)
    assert not torch.equal(a[0], a[1]), "offset must move the stream"
    assert not torch.equal(a[0], a[2]), "seed must move the stream"
    b = dspark_ops.random_bits(seed, offset, 3, 1, 64)
    assert not torch.equal(a, b), "purpose must move the stream"
    c = dspark_ops.random_bits(seed, offset, 2, 2, 64)
    assert not torch.equal(a, c), "position must move the stream"
    # Batch invariance: a row alone gives the same words as inside the batch.
    assert torch.equal(dspark_ops.random_bits(seed[1:2], offset[1:2], 2, 1, 64)[0], a[1])


def test_uniforms_are_uniform():
    bits = dspark_ops.random_bits(torch.arange(64), torch.zeros(64, dtype=torch.int64), 2, 1, 4096)
    u = reference.random_uniform(bits).ravel()
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    counts = torch.histc(u, bins=64, min=0.0, max=1.0).numpy()
    assert_distribution(counts, np.full(64, 1 / 64), "uniform bins")


def test_bad_arguments():
    with pytest.raises(RuntimeError, match="seed"):
        dspark_ops.random_bits(torch.zeros(3), torch.zeros(3, dtype=torch.int64), 1, 0, 4)
    with pytest.raises(RuntimeError, match="offset"):
        dspark_ops.random_bits(torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), 1, 0, 4)
    with pytest.raises(RuntimeError, match="count"):
        dspark_ops.random_bits(torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), 1, 0, -1)


@requires_cuda
def test_cuda_draws_the_same_bits_as_cpu():
    seed = torch.tensor([0, 1, -1, 2**62 + 12345])
    offset = torch.tensor([0, 7, -1, 2**33])
    for purpose, position in [(1, 0), (3, 9)]:
        cpu = dspark_ops.random_bits(seed, offset, purpose, position, 1003)
        gpu = dspark_ops.random_bits(seed.cuda(), offset.cuda(), purpose, position, 1003)
        assert torch.equal(cpu, gpu.cpu())

