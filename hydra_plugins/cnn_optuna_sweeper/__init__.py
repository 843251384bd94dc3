"""Our Hydra sweeper on today's Optuna (`hydra/sweeper=cnn_optuna`, chosen by `+search=optuna`).

Hydra instantiates sweepers only from the `hydra_plugins` namespace (no `__init__.py` in
`hydra_plugins/` itself, so that other plugins installed there stay visible). This package
holds only the plugin's class and configs; the search itself is `cnn.sweeps.search`.
"""
