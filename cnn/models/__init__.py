"""Models: one file per family, each registered by name (`MODELS`); `create_model` builds one.

Importing this package registers the built-in families below.
"""

from cnn.models import bn_cnn, book_cnn, ensemble, resnet, tutorial_cnn, wide_resnet  # noqa: F401  (each registers its models)
from cnn.models.registry import MODELS, build_model, create_model, register_model

__all__ = ["MODELS", "build_model", "create_model", "register_model"]
