"""tg.save / tg.load: exact .npz round trips, no pickle, atomic writes, safe loading."""
import os
import zipfile

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.models import LSTM, ElmanRNN


def test_round_trip_is_exact(tmp_path):
    tg.manual_seed(0)
    model = LSTM(3, 4, num_layers=2, bidirectional=True)
    path = tmp_path / "lstm.npz"
    tg.save(model.state_dict(), path)
    loaded = tg.load(path)
    assert list(loaded) == list(model.state_dict())
    for name, value in model.state_dict().items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    other = LSTM(3, 4, num_layers=2, bidirectional=True)
    other.load_state_dict(loaded)
    x = tg.randn(5, 2, 3)
    np.testing.assert_array_equal(other(x)[0].numpy(), model(x)[0].numpy())


def test_mixed_values_and_awkward_keys(tmp_path):
    state = {"file": np.arange(3), "allow_pickle": 1.5, "kind": "Adam", "t": tg.tensor([1.0, 2.0]),
             "flag": True, "f64": np.float64(0.1)}
    tg.save(state, tmp_path / "s.npz")
    out = tg.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(out["file"], np.arange(3))
    assert out["allow_pickle"] == 1.5 and str(out["kind"]) == "Adam" and bool(out["flag"])
    assert out["f64"] == 0.1
    np.testing.assert_array_equal(out["t"], np.array([1.0, 2.0], dtype=np.float32))


def test_is_a_plain_npz_without_pickle(tmp_path):
    tg.save({"w": np.ones((2, 2))}, tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["w"], np.ones((2, 2)))
    with pytest.raises(TypeError, match="Python objects"):
        tg.save({"bad": np.array([{}, []], dtype=object)}, tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_load_refuses_pickled_content(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        tg.load(path)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    tg.save({"w": np.zeros(3)}, path)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        tg.save({"w": np.ones(3)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(tg.load(path)["w"], np.zeros(3))  # old file intact
    assert os.listdir(tmp_path) == ["model.npz"]
    assert zipfile.is_zipfile(path)


def test_loading_missing_or_misshapen_parameter_names_it_and_changes_nothing(tmp_path):
    model = ElmanRNN(3, 4, 2)
    before = model.state_dict()
    state = dict(ElmanRNN(3, 4, 2).state_dict())
    del state["V"]
    tg.save(state, tmp_path / "missing.npz")
    with pytest.raises(KeyError, match="'V'"):
        model.load_state_dict(tg.load(tmp_path / "missing.npz"))
    state = dict(ElmanRNN(3, 4, 2).state_dict(), W=np.zeros((4, 5), dtype=np.float32))
    tg.save(state, tmp_path / "shape.npz")
    with pytest.raises(ValueError, match="'W'"):
        model.load_state_dict(tg.load(tmp_path / "shape.npz"))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        tg.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", ["empty", "truncated", "npy", "text"])
def test_load_of_a_file_that_is_not_a_state_file_is_a_valueerror_naming_it(tmp_path, content):
    path = tmp_path / "state.npz"
    tg.save({"a": np.arange(3.0)}, path)
    whole = path.read_bytes()
    if content == "empty":
        path.write_bytes(b"")
    elif content == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    elif content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.arange(3.0))
    else:
        path.write_text("not numpy at all")
    with pytest.raises(ValueError, match="state.npz"):
        tg.load(path)
