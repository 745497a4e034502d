"""LAMB in plain PyTorch, with the semantics of DeepSpeed's CUDA-only ``FusedLamb``.

DeepSpeed's ``FusedLamb`` (``deepspeed/ops/lamb/fused_lamb.py`` and its kernel
``csrc/lamb/fused_lamb_cuda_kernel.cu``) needs a CUDA build. Where it cannot run (CPU, or a GPU box without the
compiled op) the framework falls back to :class:`Lamb`, which performs the same arithmetic per parameter tensor:

.. code-block:: text

    m      = beta1 * m + (1 - beta1) * g
    v      = beta2 * v + (1 - beta2) * g * g
    update = m / (sqrt(v) + eps) + weight_decay * w        # eps_inside_sqrt: m / sqrt(v + eps)
    ratio  = clamp(||w|| / ||update||, min_trust_ratio, max_trust_ratio)   # 1.0 if either norm is 0
    step   = lr * sqrt(1 - beta2**t) / (1 - beta1**t)       # lr alone without bias correction
    w      = w - step * ratio * update

Two details follow the DeepSpeed kernel rather than the paper (You et al. 2019, "Large Batch Optimization for
Deep Learning: Training BERT in 76 minutes"): the bias correction is folded into the step size instead of being
applied to ``m`` and ``v`` (so the trust ratio is computed on the uncorrected moments), and the trust ratio is
clamped from below as well as from above (``min_coeff``/``max_coeff`` there, ``min_trust_ratio``/
``max_trust_ratio`` here). Weight decay is decoupled (added to the update, not to the gradient) and applies to
every parameter of a group; exclude biases and LayerNorm weights with a parameter group whose
``weight_decay`` is 0.

The trust ratio is per tensor the optimizer is handed. At ZeRO stage 0, DeepSpeed (0.19) wraps a client
optimizer for fp16 and bf16 in ``FP16_UnfusedOptimizer``, which keeps one fp32 master tensor per parameter, so
the ratio stays layer-wise. ZeRO stages 1-2 hand the optimizer one flat fp32 partition per parameter group and
rank instead, which turns LAMB into one trust ratio per partition, for ``FusedLamb`` as for this class (see
``docs/configs.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


class Lamb(Optimizer):
    """Layer-wise Adaptive Moments for Batch training (LAMB), matching DeepSpeed ``FusedLamb``.

    Args:
        params: parameters or parameter groups (dicts may override any option below).
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and its square.
        eps: added to the denominator for numerical stability (outside the square root unless
            ``eps_inside_sqrt``).
        weight_decay: decoupled weight decay, added to the Adam-style update before the trust ratio.
        max_trust_ratio: upper clamp of ``||w|| / ||update||`` (DeepSpeed's ``max_coeff``).
        bias_correction: fold Adam's bias correction into the step size, as ``FusedLamb`` does.
        min_trust_ratio: lower clamp of the trust ratio (DeepSpeed's ``min_coeff``).
        eps_inside_sqrt: use ``sqrt(v + eps)`` as denominator (``FusedLamb``'s ``eps_inside_sqrt``).

    Moments are kept in fp32 whatever the parameter dtype, and the update is computed in fp32, so bf16 or
    fp16 parameters are supported; the new value is rounded once when written back.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        max_trust_ratio: float = 10.0,
        bias_correction: bool = True,
        min_trust_ratio: float = 0.01,
        eps_inside_sqrt: bool = False,
    ) -> None:
        _check_options(lr, betas, eps, weight_decay, max_trust_ratio, min_trust_ratio)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            max_trust_ratio=max_trust_ratio,
            min_trust_ratio=min_trust_ratio,
            bias_correction=bias_correction,
            eps_inside_sqrt=eps_inside_sqrt,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_options(
                group["lr"], group["betas"], group["eps"], group["weight_decay"],
                group["max_trust_ratio"], group["min_trust_ratio"],
            )
        # One 0-dim tensor per updated parameter of the last step; read lazily so that step() never forces a
        # device synchronisation.
        self._last_trust_ratios: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Perform one optimisation step; parameters without a gradient are skipped."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        self._last_trust_ratios = []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients; use dense embeddings.")
                state = self.state[param]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
                state["step"] += 1
                self._last_trust_ratios.append(self._update_param(param, state, group, beta1, beta2))
        return loss

    def _update_param(
        self, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any], beta1: float, beta2: float
    ) -> torch.Tensor:
        """Apply the LAMB update to one tensor in place and return its (clamped) trust ratio."""
        grad = param.grad.float()
        weight = param.float()  # param itself when fp32, an fp32 copy for bf16/fp16
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        if group["eps_inside_sqrt"]:
            denom = exp_avg_sq.add(group["eps"]).sqrt_()
        else:
            denom = exp_avg_sq.sqrt().add_(group["eps"])
        update = exp_avg / denom
        if group["weight_decay"] != 0.0:
            update.add_(weight, alpha=group["weight_decay"])

        weight_norm = torch.linalg.vector_norm(weight)
        update_norm = torch.linalg.vector_norm(update)
        # A zero-norm tensor (freshly zero-initialised bias, or an update that vanished) has no meaningful ratio;
        # FusedLamb then falls back to a plain Adam step (ratio 1) and so do we.
        ratio = torch.where(
            (weight_norm > 0) & (update_norm > 0),
            (weight_norm / update_norm).clamp(group["min_trust_ratio"], group["max_trust_ratio"]),
            torch.ones_like(weight_norm),
        )

        step_size = group["lr"]
        if group["bias_correction"]:
            step = state["step"]
            step_size = group["lr"] * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)

        if param.dtype == torch.float32:
            param.sub_(update.mul_(ratio * step_size))
        else:
            param.copy_(weight.sub_(update.mul_(ratio * step_size)))
        return ratio

    def get_lamb_coeffs(self) -> list[float]:
        """Trust ratios applied in the last step, one per updated tensor (as ``FusedLamb.get_lamb_coeffs``)."""
        return [float(r) for r in self._last_trust_ratios]


def _check_options(
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    max_trust_ratio: float,
    min_trust_ratio: float,
) -> None:
    """Reject option values that would silently produce a wrong or diverging optimiser."""
    if not lr >= 0.0:
        raise ValueError(f"Lamb: lr must be >= 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"Lamb: betas must be two values in [0, 1), got {betas}")
    if not eps > 0.0:
        raise ValueError(f"Lamb: eps must be > 0 (it keeps the denominator away from 0), got {eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Lamb: weight_decay must be >= 0, got {weight_decay}")
    if not 0.0 < min_trust_ratio <= max_trust_ratio:
        raise ValueError(
            f"Lamb: need 0 < min_trust_ratio <= max_trust_ratio, got min={min_trust_ratio}, max={max_trust_ratio}"
        )
