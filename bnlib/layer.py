"""A Batch Normalization layer with running statistics, in NumPy.

It reproduces ``torch.nn.BatchNorm1d`` / ``BatchNorm2d`` / ``BatchNorm3d``
(torch 2.13), including their conventions and edge cases:

* ``momentum`` is the weight of the **new** batch, alpha in the book:
  ``running = (1 - momentum) * running + momentum * batch_stat``
  (PyTorch's meaning; Keras' ``momentum`` is the decay ``rho = 1 - alpha``,
  see :meth:`BatchNorm.from_decay`).
* ``momentum=None`` gives the cumulative average, alpha_t = 1/t.
* The running variance is updated with the **unbiased** batch variance
  (times m/(m-1)), while the batch is normalised with the **biased** one.
* ``running_mean`` starts at 0 and ``running_var`` at 1.
* An empty batch (N = 0) gives an empty output and zero gradients, leaves the
  running statistics unchanged and still counts in ``num_batches_tracked``.
* In eval mode the layer normalises with the running statistics whenever it
  has them, even if ``track_running_stats`` was switched off after
  construction; in training mode with ``track_running_stats`` off it updates
  nothing.

Deliberate differences from torch, each an error where torch computes on:

* ``momentum`` must lie in [0, 1] (torch accepts any number, e.g. 1.5, which
  is no longer an average);
* a negative running variance in eval mode raises (torch returns NaN);
* inputs must be float32 or float64 (torch also takes float16 and bfloat16),
  and of the layer's own dtype (torch raises "mixed dtype" too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .core import (
    _check_eps,
    _check_x,
    _raise_if_not_finite,
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_inference,
    normalized,
)

__all__ = ["BatchNorm"]


def _check_momentum(momentum: Any, name: str = "momentum") -> float | None:
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)):
        raise TypeError(f"{name} must be a float in [0, 1] or None; got {momentum!r}")
    if not (0.0 <= momentum <= 1.0):
        raise ValueError(f"{name} must be in [0, 1]; got {momentum!r}")
    return float(momentum)


class BatchNorm:
    """Batch Normalization with running statistics, matching ``torch.nn.BatchNorm*d``.

    Parameters
    ----------
    num_features : int
        Number of channels C; inputs have shape (N, C) or (N, C, *spatial).
    eps : float, default 1e-5
        Added to the variance before the square root; must be positive.
    momentum : float in [0, 1] or None, default 0.1
        Weight alpha of the new batch in the running averages (PyTorch's
        meaning). ``None`` uses the cumulative average alpha_t = 1/t.
    affine : bool, default True
        Learn gamma (init 1) and beta (init 0); otherwise they stay fixed at 1 and 0.
    track_running_stats : bool, default True
        Keep ``running_mean``, ``running_var`` and ``num_batches_tracked``. If
        False, batch statistics are used in eval mode too, as in PyTorch.
    dtype : numpy dtype, default float32
        Dtype of the parameters and buffers (PyTorch's default is float32);
        inputs must have the same dtype.
    bias : bool, default True, keyword only
        With ``affine=True``, learn the shift beta; ``bias=False`` keeps beta
        at 0 and learns the scale gamma only (torch 2.13's ``bias=False``).

    Attributes
    ----------
    gamma, beta : ndarray, shape (C,)
    running_mean, running_var : ndarray, shape (C,), or None
    num_batches_tracked : int, or None
    training : bool
    dgamma, dbeta : ndarray, shape (C,), or None
        Gradients from the last call to :meth:`backward`.

    Notes
    -----
    Edge cases follow torch 2.13: an empty batch (N = 0) gives an empty output
    and zero gradients, leaves the running statistics unchanged and still
    increments ``num_batches_tracked``; one value per channel raises in training
    mode; in eval mode the running statistics are used whenever they exist, even
    after ``track_running_stats`` is switched off. Deliberate differences, each
    an error where torch computes on: ``momentum`` outside [0, 1], a negative
    running variance in eval mode (torch returns NaN), and dtypes other than
    float32 and float64 (torch also takes float16); an input whose dtype is not
    the layer's raises, as in torch ("mixed dtype").

    Examples
    --------
    PyTorch's own test vector: one channel, input [1, 2].

    >>> bn = BatchNorm(1)
    >>> _ = bn(np.array([[1.0], [2.0]], dtype=np.float32))
    >>> round(float(bn.running_mean[0]), 6), round(float(bn.running_var[0]), 6)
    (0.15, 0.95)
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: Any = np.float32,
        *,
        bias: bool = True,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
            raise TypeError(f"num_features must be a positive int; got {num_features!r}")
        if num_features < 1:
            raise ValueError(f"num_features must be a positive int; got {num_features}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be a floating dtype, float32 or float64; got {self.dtype}")
        self.num_features = int(num_features)
        self.eps = _check_eps(eps)
        self.momentum = _check_momentum(momentum)
        self.affine = bool(affine)
        self.bias = bool(bias) and self.affine
        self.track_running_stats = bool(track_running_stats)
        self.gamma = np.ones(num_features, dtype=self.dtype)
        self.beta = np.zeros(num_features, dtype=self.dtype)
        self.dgamma: np.ndarray | None = None
        self.dbeta: np.ndarray | None = None
        self.training = True
        self._cache: dict | None = None
        self.running_mean: np.ndarray | None = None
        self.running_var: np.ndarray | None = None
        self.num_batches_tracked: int | None = None
        if self.track_running_stats:
            self.reset_running_stats()

    @classmethod
    def from_decay(cls, num_features: int, decay: float = 0.99, **kwargs: Any) -> "BatchNorm":
        """Build the layer from a Keras/TensorFlow-style decay rho.

        Keras' ``BatchNormalization(momentum=rho)`` keeps
        ``running = rho * running + (1 - rho) * batch_stat``; this is PyTorch's
        ``momentum = alpha = 1 - rho``.

        Parameters
        ----------
        num_features : int
        decay : float in [0, 1], default 0.99 (Keras' default)
            Weight of the **old** running value.
        **kwargs
            Passed to :class:`BatchNorm` (not ``momentum``).
        """
        if "momentum" in kwargs:
            raise TypeError("from_decay takes decay, not momentum; use BatchNorm(momentum=...)")
        decay = _check_momentum(decay, "decay")
        if decay is None:
            raise TypeError("decay must be a float in [0, 1]; got None")
        return cls(num_features, momentum=1.0 - decay, **kwargs)

    # ----------------------------------------------------------------- state
    def reset_running_stats(self) -> None:
        """Set running_mean to 0, running_var to 1 and num_batches_tracked to 0."""
        self.running_mean = np.zeros(self.num_features, dtype=self.dtype)
        self.running_var = np.ones(self.num_features, dtype=self.dtype)
        self.num_batches_tracked = 0

    def train(self, mode: bool = True) -> "BatchNorm":
        """Switch to training mode (batch statistics, running averages updated)."""
        self.training = bool(mode)
        return self

    def eval(self) -> "BatchNorm":
        """Switch to inference mode (running statistics, when tracked)."""
        return self.train(False)

    def _uses_batch_stats(self) -> bool:
        # As torch: batch statistics in training mode, or when there are no running ones.
        return self.training or self.running_mean is None

    # ----------------------------------------------------------------- passes
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalise a batch.

        Parameters
        ----------
        x : ndarray, shape (N, C) or (N, C, *spatial), the layer's dtype
            C must equal ``num_features``. With batch statistics (training
            mode, or no running statistics) ``N * prod(spatial)`` must not be 1;
            N = 0 gives an empty output.

        Returns
        -------
        y : ndarray, same shape and dtype as x
        """
        batch_stats = self._uses_batch_stats()
        _check_x(x, training=batch_stats)
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"x must have num_features = {self.num_features} channels on axis 1; "
                f"got shape {x.shape}"
            )
        if x.dtype != self.dtype:
            raise TypeError(f"x must have the layer's dtype {self.dtype} (mixed dtype, which torch "
                            f"also rejects); got {x.dtype}. Cast x, or build the layer with dtype=")
        if not batch_stats:
            _raise_if_not_finite(self.running_mean, "running_mean")
            _raise_if_not_finite(self.running_var, "running_var")
            y = batch_norm_inference(
                x, self.running_mean, self.running_var, self.gamma, self.beta, self.eps
            )
            inv_std = 1.0 / np.sqrt(self.running_var + self.eps)
            self._cache = {"eval": True, "x": x, "mean": self.running_mean, "inv_std": inv_std,
                           "gamma": self.gamma}
            return y
        y, self._cache = batch_norm_forward(x, self.gamma, self.beta, self.eps)
        if self.training and self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(self._cache["mean"], self._cache["var"], x.size // x.shape[1])
        return y

    __call__ = forward

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, m: int) -> None:
        self.num_batches_tracked += 1
        if m == 0:                                           # an empty batch: counted, no statistics
            return
        alpha = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        unbiased = var * (m / (m - 1))                       # Bessel's correction
        self.running_mean = ((1 - alpha) * self.running_mean + alpha * mean).astype(self.dtype)
        self.running_var = ((1 - alpha) * self.running_var + alpha * unbiased).astype(self.dtype)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Back-propagate through the last :meth:`forward`.

        Parameters
        ----------
        dy : ndarray, shape of the last input
            Upstream gradient.

        Returns
        -------
        dx : ndarray, shape of dy
            Also sets ``self.dgamma`` and ``self.dbeta`` (shape (C,); zero for a
            parameter that is not learned: both with ``affine=False``, ``dbeta``
            with ``bias=False``).
        """
        if self._cache is None:
            raise RuntimeError("backward called before forward")
        if self._cache.get("eval"):
            # Inference mode: y = gamma * inv_std * (x - mean) + beta, a fixed affine map per channel.
            x = self._cache["x"]
            if not isinstance(dy, np.ndarray) or dy.shape != x.shape:
                raise ValueError(
                    f"dy must be an array with the shape of the forward input {x.shape}; "
                    f"got {getattr(dy, 'shape', type(dy).__name__)}"
                )
            x_hat = normalized(self._cache)
            axes = (0,) + tuple(range(2, dy.ndim))
            dgamma = np.sum(dy * x_hat, axis=axes)
            dbeta = dy.sum(axis=axes)
            dx = dy * (self.gamma * self._cache["inv_std"]).reshape((1, -1) + (1,) * (dy.ndim - 2))
        else:
            dx, dgamma, dbeta = batch_norm_backward(dy, self._cache)
        if not self.affine:
            dgamma = np.zeros_like(dgamma)
        if not self.bias:
            dbeta = np.zeros_like(dbeta)
        self.dgamma, self.dbeta = dgamma, dbeta
        return dx

    def parameters(self) -> list[np.ndarray]:
        """Learnable parameters: [gamma, beta], [gamma] with ``bias=False``, [] with ``affine=False``."""
        return [self.gamma, self.beta][: 2 if self.bias else 1] if self.affine else []

    def __repr__(self) -> str:
        return (
            f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
            + ("" if self.bias or not self.affine else ", bias=False") + ")"
        )
