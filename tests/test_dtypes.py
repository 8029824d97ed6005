import numpy as np
import pyarrow as pa
import pytest
import torch

from hf_dtype.dtypes import (
    DTYPE_NAMES,
    bfloat16_bits_to_float32,
    canonical_dtype,
    float32_to_bfloat16_bits,
    smallest_integer_dtype,
    to_arrow,
    to_numpy,
    to_torch,
)


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("uint16", "uint16"), (np.uint16, "uint16"), (np.dtype("uint16"), "uint16"), (torch.uint16, "uint16"),
        ("torch.int64", "int64"), ("long", "int64"), ("bf16", "bfloat16"), ("bfloat16", "bfloat16"),
        (torch.bfloat16, "bfloat16"), ("fp16", "float16"), ("half", "float16"), (pa.float16(), "float16"),
        ("float", "float32"), (bool, "bool"), (pa.int8(), "int8"), ("BOOL", "bool"),
    ],
)
def test_canonical_dtype_accepts_every_spelling(spelling, name):
    assert canonical_dtype(spelling) == name


@pytest.mark.parametrize("bad", ["uint12", "string", object, 3])
def test_unknown_dtype_lists_the_valid_ones(bad):
    with pytest.raises(ValueError, match=r"Unknown dtype .* expected one of bool, int8"):
        canonical_dtype(bad)


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_every_dtype_has_numpy_arrow_and_torch_forms(name):
    assert to_torch(name) == getattr(torch, name)
    assert to_numpy(name).itemsize == to_arrow(name).bit_width // 8 or name == "bool"


@pytest.mark.parametrize(
    ("low", "high", "name"),
    [(0, 255, "uint8"), (0, 256, "uint16"), (0, 30521, "uint16"), (-100, 8, "int8"), (-129, 0, "int16"), (0, 2**40, "uint64")],
)
def test_smallest_integer_dtype(low, high, name):
    assert smallest_integer_dtype(low, high) == name


def test_smallest_integer_dtype_overflows_loudly():
    with pytest.raises(OverflowError, match="No integer dtype"):
        smallest_integer_dtype(-1, 2**64)


def test_bfloat16_bits_match_torch_rounding():
    values = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 1e3
    values = np.concatenate([values, [0.0, -0.0, np.inf, -np.inf, 3.0e38, 1e-40, 1.0 + 2**-8]]).astype(np.float32)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float32_to_bfloat16_bits(values), expected)
    as_float = torch.from_numpy(expected.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bfloat16_bits_to_float32(expected), as_float)


def test_bfloat16_nan_stays_nan():
    assert np.isnan(bfloat16_bits_to_float32(float32_to_bfloat16_bits(np.array([np.nan], dtype=np.float32))))[0]
