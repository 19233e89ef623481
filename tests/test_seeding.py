"""Seed ranges and per-sample noise."""

from __future__ import annotations

import pytest
import torch

from cmdbench.seeding import SeedRangeError, format_seeds, make_generators, parse_seeds, randn_per_sample


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0-3", (0, 1, 2, 3)), ("7", (7,)), ("0,3,5-7", (0, 3, 5, 6, 7)), (" 2 - 4 ", (2, 3, 4)), (5, (5,)),
     ([4, 1], (4, 1))],
)
def test_parse_seeds(text, expected):
    assert parse_seeds(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "empty"), ("a-3", "malformed"), ("3-1", "reversed"), ("0-2,2", "repeats"), ("1,,2", "malformed"),
     ("-1", "malformed"), ([-2], "non-negative"), ("0-", "malformed")],
)
def test_parse_seeds_rejects(text, match):
    with pytest.raises(SeedRangeError, match=match):
        parse_seeds(text)


def test_format_seeds_inverts_parse():
    for text in ("0-2047", "0,3,5-9", "4", "1-2,4-5,9"):
        assert format_seeds(parse_seeds(text)) == text


def test_randn_per_sample_is_batch_size_invariant():
    batch = randn_per_sample(make_generators("3-5"), (2, 4))
    alone = randn_per_sample(make_generators("4"), (2, 4))
    assert batch.shape == (3, 2, 4)
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(batch[0], batch[1])


def test_randn_per_sample_matches_an_independent_draw():
    expected = torch.randn((2, 3), generator=torch.Generator().manual_seed(11))
    assert torch.equal(randn_per_sample(make_generators([11]), (2, 3))[0], expected)


def test_randn_per_sample_dtype_and_empty():
    assert randn_per_sample(make_generators([0]), (2,), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="at least one"):
        randn_per_sample([], (2,))
