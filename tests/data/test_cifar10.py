"""CIFAR-10's python batches: the official format in its forms, and files that are not it
(damaged, incomplete, or a pickle that would run code)."""

import io
import pickle
import struct
import tarfile

import numpy as np
import pytest

from cnn import data
from cnn.data import cifar10
from cnn.errors import DataError


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist()}


def write_cifar(directory, per_batch=4):
    directory.mkdir(parents=True)
    batches = {name: _cifar_batch(per_batch, i) for i, name in enumerate(cifar10.CIFAR10_BATCHES)}
    for name, batch in batches.items():
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in cifar10.CIFAR10_CLASSES]}, f)
    return batches


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2 did the official batches: protocol 2, every string a Python 2 str
    (BINSTRING, read back as bytes with encoding="bytes")."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_py2_str


def python2_batch(batch: dict) -> bytes:
    """`batch` as the official files hold it, numpy's global under its numpy 1 name as there."""
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump(batch)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


@pytest.mark.parametrize("form", ["dir", "tarball"])
def test_cifar10(tmp_path, form):
    batches = write_cifar(tmp_path / "src" / cifar10.CIFAR10_DIR)
    if form == "tarball":
        with tarfile.open(tmp_path / cifar10.CIFAR10_TAR, "w:gz") as tar:
            tar.add(tmp_path / "src" / cifar10.CIFAR10_DIR, arcname=cifar10.CIFAR10_DIR)
        where = tmp_path
    else:
        where = tmp_path / "src"
    d = data.load("cifar10", str(where))
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (4, 32, 32, 3)
    # Channel-major rows: the first 1024 bytes are the red plane.
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(d.x_train[0, :, :, 0].ravel(), first[:1024])
    np.testing.assert_array_equal(d.x_train[0, :, :, 2].ravel(), first[2048:])
    assert d.y_test.tolist() == batches["test_batch"][b"labels"]


def test_the_official_python2_batches_load(tmp_path):
    batches = {}
    for i, name in enumerate(cifar10.CIFAR10_BATCHES):
        batches[name] = {b"batch_label": f"{name} of 6".encode(), **_cifar_batch(3, i),
                         b"filenames": [f"img_{i}_{k}.png".encode() for k in range(3)]}
        (tmp_path / name).write_bytes(python2_batch(batches[name]))
    raw = (tmp_path / "test_batch").read_bytes()
    assert raw.startswith(b"\x80\x02}") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw  # the official form
    d = data.load("cifar10", str(tmp_path))
    assert d.x_train.shape == (15, 32, 32, 3) and d.x_train.dtype == np.uint8
    np.testing.assert_array_equal(d.x_test[1].transpose(2, 0, 1).ravel(), batches["test_batch"][b"data"][1])
    assert d.y_train[:3].tolist() == batches["data_batch_1"][b"labels"]


class Payload:
    """What a crafted batch carries: unpickled, it opens (creates) `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_batch_that_would_run_code_is_refused_before_it_runs(tmp_path):
    armed = pickle.dumps({b"data": Payload(tmp_path / "proof"), b"labels": [0]})
    pickle.loads(armed)
    assert (tmp_path / "proof").exists()  # plain pickle.load would have run it

    write_cifar(tmp_path / "d")
    marker = tmp_path / "marker"
    (tmp_path / "d" / "data_batch_2").write_bytes(
        pickle.dumps({b"labels": [0] * 4, b"data": Payload(marker)}))
    with pytest.raises(DataError) as e:
        data.load("cifar10", str(tmp_path / "d"))
    assert not marker.exists()
    (line,) = str(e.value).splitlines()
    assert line.startswith(f"{tmp_path / 'd' / 'data_batch_2'}: not a CIFAR-10 python batch: "
                           f"it names {open.__module__}.open,")  # the refused global, as the pickle names it
    assert "nothing in the file was run" in line


def test_a_damaged_batch_is_named(tmp_path):
    write_cifar(tmp_path / cifar10.CIFAR10_DIR)
    (tmp_path / cifar10.CIFAR10_DIR / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        data.load("cifar10", str(tmp_path))


def test_missing_batches_are_the_ones_named(tmp_path):
    write_cifar(tmp_path / "d")
    for name in ("data_batch_4", "test_batch"):
        (tmp_path / "d" / name).unlink()
    with pytest.raises(DataError) as e:
        data.load("cifar10", str(tmp_path / "d"))
    message = str(e.value)
    assert f"{tmp_path / 'd'}/{{data_batch_4,test_batch}} (the other batches are there)" in message
    assert "data_batch_1" not in message.split(" or ")[0]
    assert message.endswith(f"Fix: put the missing files in {tmp_path / 'd'}, or set "
                            "dataset.data_dir=<the directory that has them>")


def test_he_et_als_resnet_recipe_trains_on_format_true_files(tmp_path):
    """+experiment=resnet20_cifar10 as a user runs it, on random images in the official format (there
    is no CIFAR-10 here): one epoch, a shallower network, the rest of the recipe as published."""
    from helpers import make_config

    from cnn.training import train

    write_cifar(tmp_path / "data" / cifar10.CIFAR10_DIR, per_batch=40)
    config = make_config(tmp_path, "+experiment=resnet20_cifar10", "model.depth=8", "epochs=1",
                         data_dir=tmp_path / "data")
    assert (config.dataset.pad, config.dataset.flip, config.optimizer["name"]) == (4, True, "sgd")
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["protocol"] == "validation" and results["steps"] == 2  # 180 images at batch 128
    assert 0.0 <= results["test_accuracy"] <= 1.0
