"""privsplit.results: one way to save a result (round trips, NaN/inf rule, atomic write, schema and damage errors)."""

from __future__ import annotations

import enum
import json
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from results_samples import samples

from privsplit.errors import ResultError, RunError
from privsplit.results import atomic_write, dumps, from_dict, load_json, read_json, save_json, save_npz, to_dict

V1 = Path(__file__).parent / "data" / "results_v1"


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner:
    score: float
    auc: float | None = None


@dataclass(frozen=True)
class Outer:
    name: str
    color: Color
    shape: tuple[int, int, int]
    values: tuple[float, ...]
    inner: Inner
    by_name: dict[str, Inner] = field(default_factory=dict)
    maybe: Inner | None = None
    path: Path = Path("runs/a")
    count: int | None = None


def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity (what a strict JSON reader does)."""

    def refuse(token):
        raise ValueError(f"non-JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


finite = st.floats(allow_nan=False, allow_infinity=False)
inners = st.builds(Inner, score=finite, auc=st.none() | finite)
outers = st.builds(
    Outer,
    name=st.text(max_size=8),
    color=st.sampled_from(Color),
    shape=st.tuples(st.integers(), st.integers(), st.integers()),
    values=st.lists(finite, max_size=4).map(tuple),
    inner=inners,
    by_name=st.dictionaries(st.text(max_size=4), inners, max_size=3),
    maybe=st.none() | inners,
    path=st.sampled_from([Path("a"), Path("runs/b.json")]),
    count=st.none() | st.integers(),
)


@settings(max_examples=60, deadline=None)
@given(outers)
def test_dataclass_round_trip(obj):
    data = strict_loads(dumps(obj))
    assert data["color"] == obj.color.value and data["shape"] == list(obj.shape)
    assert from_dict(Outer, data) == obj


def test_numpy_values_become_plain_json():
    data = to_dict({"a": np.arange(3, dtype=np.int64), "b": np.float32(0.5), "c": np.array([[1.0, np.nan]])})
    assert data == {"a": [0, 1, 2], "b": 0.5, "c": [[1.0, None]]}
    assert type(data["a"][0]) is int


def test_unwritable_value_fails_loudly():
    with pytest.raises(TypeError, match="cannot write a object"):
        dumps({"x": object()})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("inf")])
def test_non_finite_numbers_are_written_as_null(tmp_path, value):
    path = save_json(tmp_path / "r.json", {"x": value, "xs": [1.0, value], "inner": Inner(score=value, auc=value)})
    data = strict_loads(path.read_text())  # valid JSON: no NaN/Infinity tokens
    assert data == {"x": None, "xs": [1.0, None], "inner": {"score": None, "auc": None}}
    back = from_dict(Inner, data["inner"])
    assert math.isnan(back.score) and back.auc is None  # float field -> NaN, float | None field -> None


def test_atomic_write_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = save_json(tmp_path / "r.json", {"ok": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_json(path, {"ok": 2, "bad": object()})
    with pytest.raises(RuntimeError, match="disk"):

        def half(fh):
            fh.write(b'{"ok": ')
            raise RuntimeError("disk gone")

        atomic_write(path, half)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary files left behind


def test_save_npz_is_atomic_and_never_pickles(tmp_path):
    path = save_npz(tmp_path / "a.npz", {"x": np.arange(4), "y": np.ones((2, 2), np.float32)})
    with np.load(path, allow_pickle=False) as z:
        assert z["x"].tolist() == [0, 1, 2, 3] and z["y"].dtype == np.float32
    with pytest.raises(TypeError, match="pickle"):
        save_npz(path, {"x": np.array([{"a": 1}], dtype=object)})
    with np.load(path, allow_pickle=False) as z:
        assert z["x"].tolist() == [0, 1, 2, 3]


def test_schema_header_comes_first_and_is_checked(tmp_path):
    path = save_json(tmp_path / "r.json", Inner(score=0.5), version=3, kind="inner")
    assert list(json.loads(path.read_text()))[:2] == ["schema_version", "kind"]
    assert load_json(path, Inner, version=3, kind="inner") == Inner(score=0.5)
    with pytest.raises(ResultError) as err:
        load_json(path, Inner, version=4, kind="inner", hint="re-run `privsplit x`")
    msg = str(err.value)
    assert str(path) in msg and "schema version 3" in msg and "expected 4" in msg and "re-run `privsplit x`" in msg
    with pytest.raises(ResultError, match="'inner' result, expected 'outer'"):
        load_json(path, version=3, kind="outer")


def test_damaged_or_missing_json_is_one_clear_error(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"schema_version": 1, "x": ')
    with pytest.raises(ResultError) as err:
        read_json(path, hint="re-run it")
    assert str(path) in str(err.value) and "not valid JSON" in str(err.value) and "\n" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no JSONDecodeError traceback
    assert isinstance(err.value, RunError) and err.value.exit_code == 2
    with pytest.raises(ResultError, match="not found"):
        read_json(tmp_path / "missing.json")
    path.write_text('{"schema_version": 1, "score": "high"}')
    with pytest.raises(ResultError, match="does not hold a valid"):
        load_json(path, Inner, version=1)


def test_strict_from_dict_names_unknown_keys():
    from privsplit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown Inner keys: \['bogus'\]"):
        from_dict(Inner, {"score": 1.0, "bogus": 2}, strict=True)
    assert from_dict(Inner, {"score": 1.0, "derived": 2}) == Inner(score=1.0)


# ---- every result type --------------------------------------------------------------------------------
def _load(obj, path: Path):
    cls = type(obj)
    if "load" in vars(cls):
        return cls.load(path)
    return cls.from_json(json.loads(path.read_text()))


def _save(obj, path: Path) -> None:
    if "save" in vars(type(obj)):
        obj.save(path)
    else:
        save_json(path, obj.to_json())


def _same(a, b) -> bool:
    if type(a).__name__ == "Split":
        parts = ("members", "reference", "holdout", "attacker")
        return a.n == b.n and a.seed == b.seed and all(np.array_equal(a[p], b[p]) for p in parts)
    if type(a).__name__ == "OutputProbeResult":
        arrays = all(np.array_equal(a.arrays.scores[k], b.arrays.scores[k]) for k in a.arrays.scores)
        return replace(a, arrays=None).to_json() == replace(b, arrays=None).to_json() and arrays and a.mia == b.mia
    return a == b


@pytest.mark.parametrize("name", sorted(samples()))
def test_every_result_type_round_trips_through_a_strict_json_file(tmp_path, name):
    obj, _ = samples()[name]
    path = tmp_path / name
    _save(obj, path)
    strict_loads(path.read_text())
    back = _load(obj, path)
    assert _same(back, obj)
    assert back.to_json() == obj.to_json()


@pytest.mark.parametrize("name", sorted(samples()))
def test_files_written_by_the_previous_version_still_load(tmp_path, name):
    """``tests/data/results_v1`` was written by commit da82146 (before privsplit.results), same builders."""
    shutil.copytree(V1, tmp_path / "v1")
    obj, _ = samples()[name]
    back = _load(obj, tmp_path / "v1" / name)
    assert _same(back, obj)


def test_parity_report_of_the_previous_version_with_infinity_loads_and_resaves_as_json(tmp_path):
    from privsplit.export.parity import ParityReport

    old = V1 / "parity_nonfinite.json"
    assert "Infinity" in old.read_text()  # what the issue reported: not JSON
    report = ParityReport.load(old)
    row = report.format("tflite-fp16")
    assert row.max_abs_err == math.inf and math.isnan(row.cosine)
    resaved = report.save(tmp_path / "parity.json")
    data = strict_loads(resaved.read_text())
    assert data["formats"]["tflite-fp16"]["max_abs_err"] is None and data["formats"]["tflite-fp16"]["cosine"] is None
    again = ParityReport.load(resaved).format("tflite-fp16")
    assert again.max_abs_err is None and again.cosine is None and again.task_accuracy is None


def test_result_loaders_name_the_file_and_versions(tmp_path):
    from privsplit.cloud.loadgen import LoadResult
    from privsplit.edge.latency import BenchResult
    from privsplit.export.parity import ParityReport
    from privsplit.probes.feature_results import FeatureLeakageResult
    from privsplit.probes.output_results import OutputProbeResult

    for name, cls in [
        ("parity.json", ParityReport),
        ("probe_features.json", FeatureLeakageResult),
        ("probe_outputs.json", OutputProbeResult),
        ("edge_bench.json", BenchResult),
        ("cloud_load.json", LoadResult),
    ]:
        data = json.loads((V1 / name).read_text())
        path = tmp_path / name
        path.write_text(json.dumps({**data, "schema_version": 99}))
        with pytest.raises(ResultError, match=rf"{path}.* schema version 99, expected 1"):
            cls.load(path)
        path.write_text(json.dumps(data)[:-20])
        with pytest.raises(ResultError, match=rf"{path} is not valid JSON"):
            cls.load(path)


def test_cli_reports_a_damaged_result_in_one_line(tmp_path, capsys):
    from privsplit.cli.main import main

    shutil.copy(V1 / "config.json", tmp_path / "config.json")
    (tmp_path / "metrics.json").write_text('{"task": {"accuracy": 0.9}}')
    (tmp_path / "probe_features.json").write_text('{"schema_version": 1, "kind": "feature_leakage", "data": {')
    code = main(["report", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "probe_features.json is not valid JSON" in err and "Traceback" not in err


def test_run_folder_config_of_another_version_names_the_file(tmp_path):
    from privsplit.run import RunFolder

    data = json.loads((V1 / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "schema_version": 2}))
    expected = rf"{tmp_path / 'config.json'} has schema version 2, expected 1: re-run `privsplit train`"
    with pytest.raises(ResultError, match=expected):
        RunFolder(tmp_path).config()
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert RunFolder(tmp_path).config() == samples()["config.json"][0]
