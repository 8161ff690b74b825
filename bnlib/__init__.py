"""bnlib: Batch Normalization, derived and tested.

The small library behind the book. NumPy is imported eagerly; torch only by
the helpers that need it.
"""

from ._version import __version__
from .core import batch_norm_backward, batch_norm_forward, batch_norm_inference, batch_statistics, normalized
from .folding import fold_batch_norm, fold_batch_norm_weights
from .layer import BatchNorm
from .moving_average import (
    accumulation_momentum,
    cumulative_average,
    debiased_ema,
    decay_to_momentum,
    effective_window,
    ema,
    ema_error,
    ema_lag,
    ema_noise_sd,
    ema_weights,
    half_life,
    momentum_to_decay,
    running_mean_band,
    startup_bias,
    trusts_ema_tracking,
)
from .nn import Linear, ReLU, Sequential, sgd_step, softmax_cross_entropy
from .population import ESTIMATORS, population_statistics
from .stats import Moments, chan_merge, one_pass_stats, two_pass_stats, welford

# Helpers that need torch are imported on first use, so that `import bnlib` stays NumPy-only.
_LAZY = {
    "recalibrate": "recalibration",
    "evaluate": "tracking",
    "train_and_track": "tracking",
    "run_grid": "grid",
    "BatchRenorm": "renorm",
    "SyncBatchNorm": "distributed",
    "launch": "distributed",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'bnlib' has no attribute {name!r}")


__all__ = [
    "__version__",
    "BatchNorm",
    "BatchRenorm",
    "ESTIMATORS",
    "Linear",
    "Moments",
    "ReLU",
    "Sequential",
    "SyncBatchNorm",
    "accumulation_momentum",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_inference",
    "batch_statistics",
    "chan_merge",
    "cumulative_average",
    "debiased_ema",
    "decay_to_momentum",
    "effective_window",
    "ema",
    "ema_error",
    "ema_lag",
    "ema_noise_sd",
    "ema_weights",
    "evaluate",
    "fold_batch_norm",
    "fold_batch_norm_weights",
    "half_life",
    "launch",
    "momentum_to_decay",
    "normalized",
    "one_pass_stats",
    "population_statistics",
    "recalibrate",
    "run_grid",
    "running_mean_band",
    "sgd_step",
    "softmax_cross_entropy",
    "startup_bias",
    "train_and_track",
    "trusts_ema_tracking",
    "two_pass_stats",
    "welford",
]
