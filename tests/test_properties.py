"""Property tests: compact then serve gives back exactly the original values, or raises. Never a silent change."""

import datasets
import numpy as np
import pyarrow as pa
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hf_dtype as hd
from hf_dtype import LossyCastError
from hf_dtype.dtypes import integer_range

INTEGER_TARGETS = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"]
FLOAT_TARGETS = ["float16", "bfloat16", "float32", "float64"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _column(values, nested: bool, leaf: str):
    if nested:
        rows = [values[i:i + 3] for i in range(0, len(values), 3)]
        return rows, datasets.Sequence(datasets.Value(leaf))
    return values, datasets.Value(leaf)


def _served(ds):
    served = ds.with_format("hf_dtype", backend="numpy")["x"]
    return np.concatenate([np.atleast_1d(row) for row in served]) if len(served) else np.array([])


def _float_reference(values: np.ndarray, target: str) -> np.ndarray:
    if target == "bfloat16":
        return torch.from_numpy(values.astype(np.float32)).bfloat16().float().numpy()
    return values.astype(target).astype(np.float64)


@SETTINGS
@given(
    values=st.lists(st.integers(-(2**40), 2**40) | st.integers(-300, 300), min_size=1, max_size=12),
    target=st.sampled_from(INTEGER_TARGETS),
    nested=st.booleans(),
)
def test_integers_round_trip_or_raise(values, target, nested):
    rows, feature = _column(values, nested, "int64")
    ds = datasets.Dataset.from_dict({"x": rows}, features=datasets.Features({"x": feature}))
    low, high = integer_range(target)
    fits = all(low <= v <= high for v in values)
    try:
        out = hd.compact(ds, {"x": target})
    except LossyCastError as error:
        assert not fits, error
        assert "Column 'x', row" in str(error)
        return
    assert fits
    np.testing.assert_array_equal(_served(out), np.array(values, dtype=np.int64))


finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.floats(-1e5, 1e5)


@SETTINGS
@given(
    values=st.lists(finite_floats | st.just(float("nan")) | st.just(float("inf")), min_size=1, max_size=12),
    target=st.sampled_from(FLOAT_TARGETS),
    nested=st.booleans(),
    exact=st.booleans(),
)
def test_floats_round_trip_or_raise(values, target, nested, exact):
    rows, feature = _column(values, nested, "float64")
    ds = datasets.Dataset.from_dict({"x": rows}, features=datasets.Features({"x": feature}))
    source = np.array(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        reference = _float_reference(source, target)
    finite = np.isfinite(source)
    overflows = bool((np.isinf(reference) & finite).any())
    inexact = bool((reference[finite] != source[finite]).any())
    try:
        out = hd.compact(ds, {"x": {"storage": target, "compute": "float64"}}, exact=exact)
    except LossyCastError as error:
        assert overflows or (exact and inexact), error
        return
    assert not overflows and not (exact and inexact)
    np.testing.assert_array_equal(_served(out), reference)


@SETTINGS
@given(values=st.lists(st.integers(-5000, 5000), min_size=1, max_size=12), target=st.sampled_from(FLOAT_TARGETS))
def test_integers_into_floats_are_exact_or_raise(values, target):
    ds = datasets.Dataset.from_dict({"x": values}, features=datasets.Features({"x": datasets.Value("int64")}))
    reference = _float_reference(np.array(values, dtype=np.float64), target)
    exact = bool((reference == np.array(values)).all())
    try:
        out = hd.compact(ds, {"x": {"storage": target, "compute": "float64"}})
    except LossyCastError:
        assert not exact
        return
    assert exact
    np.testing.assert_array_equal(_served(out), np.array(values, dtype=np.float64))


@SETTINGS
@given(values=st.lists(finite_floats, min_size=1, max_size=12), target=st.sampled_from(INTEGER_TARGETS))
def test_floats_into_integers_are_exact_or_raise(values, target):
    ds = datasets.Dataset.from_dict({"x": values}, features=datasets.Features({"x": datasets.Value("float64")}))
    low, high = integer_range(target)
    fits = all(float(v).is_integer() and low <= v <= high for v in values)
    try:
        out = hd.compact(ds, {"x": target})
    except LossyCastError:
        assert not fits
        return
    assert fits
    np.testing.assert_array_equal(_served(out).astype(np.float64), np.array(values))


@SETTINGS
@given(
    values=st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 300), min_size=1, max_size=12),
    nested=st.booleans(),
    backend=st.sampled_from(["torch", "numpy"]),
    served_by=st.sampled_from(["formatter", "transform"]),
)
def test_uint64_outside_the_plan_is_served_exactly_or_refused(values, nested, backend, served_by):
    """``datasets`` serves uint64 as int64, so 2**63 and above came out negative; now exact (numpy uint64) or refused."""
    rows, feature = _column(values, nested, "uint64")
    arrow_type = datasets.Features({"x": feature}).arrow_schema.field("x").type
    ds = datasets.Dataset(pa.table({"x": pa.array(rows, arrow_type), "y": pa.array([0] * len(rows), pa.int8())}))  # from_dict overflows
    plan = {"y": "int8"}
    try:
        if served_by == "formatter":
            served = ds.with_format("hf_dtype", plan=plan, backend=backend)[:]["x"]
        else:
            served = ds.with_transform(hd.DtypeTransform(plan, backend=backend))[:]["x"]
    except LossyCastError as error:
        assert backend == "torch" and served_by == "formatter" and max(values) >= 2**63, error
        assert "Column 'x', row" in str(error) and "backend='numpy'" in str(error)
        return
    assert _ints(served) == values


def _ints(value) -> list[int]:
    """The integers of a served value (array, tensor, list of them, Python list), flattened, as Python ints."""
    value = value.tolist() if hasattr(value, "tolist") else value
    return [item for part in value for item in _ints(part)] if isinstance(value, list) else [value]
