"""Feature maps: every channel of every conv and pool layer for one test image.

    python -m cnn.tools.visualize --checkpoint checkpoints/<run name> --index 0
    python -m cnn.tools.visualize --model book_cnn --data-dir tests/data/mnist-sample --out /tmp/maps

With --checkpoint (a run's checkpoint directory, its latest checkpoint, or a
`<dir>/ckpt-N` prefix) the model and dataset are the run's own (from run.json);
without it, a freshly initialized --model. Writes one PNG per layer, by default
into the checkpoint directory's feature_maps/ (without --checkpoint, --out is required).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def layer_outputs(model, image):
    """[(layer name, (H, W, C) array)] for each Conv2D and MaxPool2D before the classifier.

    Args:
      image: (H, W, C) float32 in [0, 1]. An ensemble shows its first member.
    """
    import keras

    from cnn.models import outputs

    net = outputs.networks(model)[0]
    x, outputs = image[None], []
    for layer in net.layers:
        if isinstance(layer, keras.layers.Flatten):
            break
        x = layer(x)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPool2D)):
            outputs.append((layer.name, keras.ops.convert_to_numpy(x[0])))
    return outputs


def load_model(checkpoint: str | None, model_name: str, dataset: str, data_dir: str | None):
    """The model (restored from `checkpoint` when given) and the dataset it was trained on."""
    import tensorflow as tf

    from cnn.checkpointing import directory as ckpt_lib
    from cnn import data as data_lib
    from cnn.errors import CheckpointError
    from cnn.models import build_model

    options = {}
    if checkpoint is not None:
        path = Path(checkpoint)
        prefix = ckpt_lib.checkpoint_paths(path)[-1] if path.is_dir() and ckpt_lib.checkpoint_paths(path) else str(path)
        run_file = Path(prefix).parent / ckpt_lib.IDENTITY_FILE
        if not Path(prefix + ".index").exists() or not run_file.exists():
            raise CheckpointError(f"--checkpoint {checkpoint}: no checkpoint with a run.json there")
        identity = json.loads(run_file.read_text())["identity"]
        model_name, dataset = identity.get("model.name"), identity["dataset.name"]
        options = {k.split(".", 1)[1]: v for k, v in identity.items() if k.startswith("model.")}
    data = data_lib.load(dataset, data_dir, download=data_dir is None)
    model = build_model({"name": model_name, **options}, data.image_shape, data.num_classes)
    if checkpoint is not None:
        tf.train.Checkpoint(model=model).read(prefix).expect_partial().assert_existing_objects_matched()
    return model, data


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a run's checkpoint directory or a <dir>/ckpt-N prefix")
    parser.add_argument("--model", default="book_cnn", help="without --checkpoint: a fresh model")
    parser.add_argument("--dataset", default="mnist", help="without --checkpoint")
    parser.add_argument("--data-dir", help="the dataset's files (as dataset.data_dir)")
    parser.add_argument("--index", type=int, default=0, help="test image index")
    parser.add_argument("--out", type=Path,
                        help="where the PNGs go (default: <the checkpoint's directory>/feature_maps)")
    args = parser.parse_args(argv)
    if args.out is None:
        if args.checkpoint is None:
            parser.error("--out is required without --checkpoint")
        checkpoint = Path(args.checkpoint)  # a directory, or a <dir>/ckpt-N prefix
        args.out = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "feature_maps"
    from cnn.runtime.console import import_tensorflow

    import_tensorflow()  # without its C++ start-up lines

    from cnn.reporting import plots
    from cnn.errors import CnnError
    from cnn.text import plural

    try:
        model, data = load_model(args.checkpoint, args.model, args.dataset, args.data_dir)
    except CnnError as e:
        sys.exit(f"error: {e}")
    if not 0 <= args.index < len(data.x_test):
        sys.exit(f"error: --index {args.index}: the test set has {plural(len(data.x_test), 'image')} "
                 f"(--index 0 to {len(data.x_test) - 1})")
    image = data.x_test[args.index].astype("float32") / 255.0
    args.out.mkdir(parents=True, exist_ok=True)
    plots.image_grid(image[None], [f"test #{args.index}: {data.class_names[data.y_test[args.index]]}"],
                     args.out / "input.png", columns=1)
    for i, (name, maps) in enumerate(layer_outputs(model, image)):
        path = plots.feature_maps(maps, f"{i + 1}. {name}", args.out / f"{i + 1:02d}_{name}.png")
        print(f"{path}: {maps.shape}")


if __name__ == "__main__":
    main()
