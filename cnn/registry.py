"""Registries of named builders (models, optimizers, datasets), and the user's own through `_target_`.

A built-in builder registers itself with a decorator, in its own file:

    @MODELS.register("bn_cnn")
    def bn_cnn(input_shape, num_classes, *, dropout: float = 0.4, bn_momentum: float = 0.99): ...

and its YAML names it (`name: bn_cnn`) beside its options. A config that names
`_target_: my_package.module.function` instead gets that function, located by Hydra
(`hydra.utils.get_method`). Either way the options are the builder's keyword arguments:
`check` compares a config's options with the builder's signature (an unknown option, a
wrong type or a value out of the registered range is one ConfigError line) before any
data is read, and `build` calls it. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from hydra.utils import get_method

from cnn.config.schema import target_name
from cnn.errors import ConfigError

TARGET = "_target_"


class Registry:
    """Builders of one kind ("model"), by name; `key` is the config key they sit under."""

    def __init__(self, key: str, context: tuple = ()):
        self.key, self.context = key, context  # context: positional arguments every builder takes first
        self.builders: dict[str, Callable] = {}
        self.ranges: dict[str, dict] = {}
        self.rules: dict[str, dict] = {}

    def register(self, name: str, ranges: Optional[dict] = None, rules: Optional[dict] = None):
        """Adds a builder under `name`, its options checked by `check` before anything is built:
        `ranges`: {option: (low, high)}, low inclusive, high exclusive (None: unbounded);
        `rules`: {option: function(value) -> None, or what a good value is (e.g. "6n+2")}."""
        def wrap(builder: Callable) -> Callable:
            self.builders[name] = builder
            self.ranges[name] = ranges or {}
            self.rules[name] = rules or {}
            return builder
        return wrap

    def __contains__(self, name: str) -> bool:
        return name in self.builders

    def __iter__(self):
        return iter(self.builders)

    def __getitem__(self, name: str) -> Callable:
        if name not in self.builders:
            raise ConfigError(f"{self.key}.name={name}: unknown {self.key}; known: {', '.join(sorted(self.builders))}")
        return self.builders[name]

    def resolve(self, spec: dict) -> tuple[str, Callable, dict]:
        """(name, builder, options) of a config node: {"name": ..., **options} or {"_target_": ..., **options}."""
        options = {k: v for k, v in spec.items() if k not in ("name", TARGET) and v is not None}
        if spec.get(TARGET) is None:
            return spec.get("name"), self[spec.get("name")], options
        return spec.get("name") or target_name(spec[TARGET]), locate(self.key, spec[TARGET]), options

    def check(self, spec: dict) -> dict:
        """The options of `spec` as its builder takes them (an int where it takes a float becomes a
        float), or a ConfigError naming the first one it does not take, or of the wrong type or range."""
        name, builder, options = self.resolve(spec)
        parameters = {p.name: p for p in inspect.signature(builder).parameters.values()
                      if p.name not in self.context and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        for option, value in options.items():
            if option not in parameters:
                raise ConfigError(f"{self.key}.{option}={value}: {name} does not take it "
                                  f"(its options: {', '.join(parameters) or 'none'})")
            options[option] = _typed(f"{self.key}.{option}", value, parameters[option].annotation)
        for option, (low, high) in self.ranges.get(spec.get("name"), {}).items():
            value = options.get(option)
            if value is not None and not ((low is None or value >= low) and (high is None or value < high)):
                bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high})"
                raise ConfigError(f"{self.key}.{option}={value}: must be in {bounds}")
        for option, rule in self.rules.get(spec.get("name"), {}).items():
            wanted = rule(options[option]) if options.get(option) is not None else None
            if wanted is not None:
                raise ConfigError(f"{self.key}.{option}={options[option]}: {name} needs {wanted}")
        return options

    def build(self, spec: dict, *context, **extra) -> Any:
        """Calls the builder of `spec` with the context (e.g. input_shape, num_classes) and its options."""
        _, builder, _ = self.resolve(spec)
        return builder(*context, **self.check(spec), **extra)


def locate(key: str, target: str) -> Callable:
    """The callable `_target_` names, located as Hydra's `instantiate` does; one line when it is not one."""
    try:
        return get_method(str(target))
    except Exception as e:  # noqa: BLE001  (ImportError, AttributeError, ValueError: all a bad _target_)
        cause = e.__cause__ or e
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        raise ConfigError(f"{key}._target_={target}: cannot use it ({reason}); it must name a function "
                          "importable from PYTHONPATH, e.g. my_models.resnet.build") from None


_NUMBERS = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}


def _typed(key: str, value, annotation):
    """`value` as `annotation` (a plain type, or a string of one under `from __future__ import annotations`)."""
    kind = {"float": float, "int": int, "bool": bool, "str": str}.get(annotation, annotation)
    if kind not in _NUMBERS:
        return value  # unannotated or a composite type: the builder's own business
    if isinstance(value, bool) and kind is not bool or not isinstance(value, _NUMBERS[kind]):
        raise ConfigError(f"{key}={value!r}: must be {kind.__name__}")
    return float(value) if kind is float else value
