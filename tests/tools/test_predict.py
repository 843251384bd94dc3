"""`python -m cnn.tools.predict`'s plain words for what it cannot use: an export directory that
is missing or is not one, and image files that are not images (no export needed to see them)."""

import numpy as np
import pytest
import tensorflow as tf

from cnn.tools import predict


@pytest.mark.parametrize("make,message", [
    (lambda d: None, "no such directory; pass an export (<checkpoint dir>/export), or write one with"),
    (lambda d: d.mkdir(), "not an export (it needs saved_model/ and labels.txt); write one with"),
])
def test_an_export_dir_that_is_missing_or_not_one_is_one_line(tmp_path, capsys, make, message):
    directory = tmp_path / "export"
    make(directory)
    image = tmp_path / "a.png"
    tf.io.write_file(str(image), tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)))
    assert predict.main([str(directory), str(image)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"error: {directory}: {message} `python train.py mode=export <the run's settings>`"]


@pytest.mark.parametrize("contents,reason", [
    (b"shopping list: eggs", "not a PNG, JPEG, BMP or GIF image"),
    (b"", "an empty file"),
    (b"\x89PNG\r\n\x1a\n cut short", "damaged PNG data: Invalid PNG. Failed to initialize decoder."),
    (b"GIF89a" + bytes(20), "damaged GIF data: Invalid GIF data (size 26)"),
])
def test_an_image_that_does_not_decode_is_named_in_plain_words(tmp_path, contents, reason):
    path = tmp_path / "picture.png"
    path.write_bytes(contents)
    with pytest.raises(predict.PredictError) as e:
        predict.read_image(path, (8, 8, 1), [])
    (line,) = str(e.value).splitlines()
    assert line.startswith(f"{path}: not a decodable image ({reason}")
    assert "function_node" not in line and "Op:" not in line and "{{" not in line


def test_unreadable_image_paths_are_named(tmp_path):
    for path, message in ((tmp_path / "gone.png", "no such file"), (tmp_path, "a directory, not an image file")):
        with pytest.raises(predict.PredictError, match=f"^{path}: {message}$"):
            predict.read_image(path, (8, 8, 1), [])
