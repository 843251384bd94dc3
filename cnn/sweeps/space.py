"""A search space from Hydra's sweep syntax: `hydra.sweeper.params` and the command line's
sweep overrides, as Optuna distributions; everything else is held fixed.

    choice(32, 64, 128)           -> CategoricalDistribution
    interval(0.1, 0.9)            -> FloatDistribution (IntDistribution for two ints)
    tag(log, interval(1e-4, 1e-2)) -> the same, log-scaled
    range(1, 5) / range(0.1, 0.5, 0.1) -> IntDistribution / FloatDistribution with that step
                                     (Hydra's range excludes its stop, and so does this)
    lr=0.1,0.01                   -> choice(0.1, 0.01)
"""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from cnn.errors import ConfigError


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{override.input_line}: an empty range")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"{override.input_line}: not a search space Optuna takes (choice, interval, range)")


def search_space(params: dict, arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """({key: distribution}, fixed overrides) from the sweeper's `params` and the command line
    (which wins over `params` for the same key)."""
    parser = OverridesParser.create()
    space, fixed = {}, []
    lines = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    try:
        parsed = parser.parse_overrides(lines)
    except Exception as e:  # noqa: BLE001  (Hydra's parse errors, as one line)
        raise ConfigError(f"hydra.sweeper.params: {str(e).strip().splitlines()[0]}") from None
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
            fixed = [f for f in fixed if not f.startswith(f"{key}=")]
        else:
            space.pop(key, None)
            fixed.append(override.input_line)
    return space, fixed
