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

The step runs on ``torch._foreach_*`` multi-tensor ops by default: the tensors of a parameter group are bucketed
by device and dtype, each bucket is updated with a handful of multi-tensor kernels (one launch for many tensors on
CUDA), and the per-tensor trust ratios come from ``torch._foreach_norm`` as one vector. Nothing in the step reads
a value back to the host, so ``step()`` never waits for the accelerator; :meth:`Lamb.get_lamb_coeffs` does, and
only when called. ``foreach=False`` keeps the plain per-tensor loop (the reference the foreach path is tested
against, and the "before" of ``framework/benchmarks/hot_path.py``); both perform the same operations in the same
order, so on CPU they agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]

# Elements per multi-tensor call. The foreach path materialises the denominator and the update of every tensor of a
# call at once (8 bytes per element in fp32). On an accelerator, 2**25 elements keep that transient under 256 MB
# (BERT-base has 110M parameters: unchunked it would be 0.9 GB on top of the optimizer state) while still covering
# dozens of tensors per launch. On CPU, where a foreach op is a loop over its tensors anyway, one call over all of
# BERT-small's 5.4M parameters ran 1.6x slower than the per-tensor loop (each pass streamed every intermediate
# through memory), and calls of 2**18 elements (intermediates that stay in cache) ran as fast as the loop
# (docs/benchmarks.md, "Hot path"). A tensor larger than the cap gets a call of its own.
FOREACH_CHUNK_ELEMENTS = 2**25
CPU_FOREACH_CHUNK_ELEMENTS = 2**18


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
        foreach: update with ``torch._foreach_*`` multi-tensor ops (the default); ``False`` loops over tensors.

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
        foreach: bool = True,
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
        self.foreach = bool(foreach)
        # The trust ratios of the last step as (positions among the updated tensors, 1-D tensor of ratios) pairs,
        # kept on the device and read only by get_lamb_coeffs(), so that step() never forces a synchronisation.
        self._last_trust_ratios: list[tuple[list[int], torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Perform one optimisation step; parameters without a gradient are skipped."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        self._last_trust_ratios = []
        position = 0  # index of the next updated tensor, in group-then-parameter order (get_lamb_coeffs' order)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            updated = []
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
                updated.append(param)
            positions = list(range(position, position + len(updated)))
            position += len(updated)
            if self.foreach:
                for chunk in _foreach_chunks(updated, positions):
                    ratios = self._update_chunk([p for p, _ in chunk], group, beta1, beta2)
                    self._last_trust_ratios.append(([i for _, i in chunk], ratios))
            else:
                for param, i in zip(updated, positions):
                    ratio = self._update_param(param, self.state[param], group, beta1, beta2)
                    self._last_trust_ratios.append(([i], ratio.reshape(1)))
        return loss

    def _update_chunk(
        self, params: list[torch.Tensor], group: dict[str, Any], beta1: float, beta2: float
    ) -> torch.Tensor:
        """Apply the LAMB update in place to tensors of one device and dtype; return their trust ratios (1-D).

        The operations and their order are those of :meth:`_update_param`, one multi-tensor call per line.
        """
        states = [self.state[p] for p in params]
        grads = [p.grad.float() for p in params]  # the gradients themselves when fp32 (no copy)
        weights = [p.float() for p in params]  # the parameters themselves when fp32, fp32 copies otherwise
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]

        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        if group["eps_inside_sqrt"]:
            denoms = torch._foreach_add(exp_avg_sqs, group["eps"])
            torch._foreach_sqrt_(denoms)
        else:
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denoms, group["eps"])
        updates = torch._foreach_div(exp_avgs, denoms)
        del denoms
        if group["weight_decay"] != 0.0:
            torch._foreach_add_(updates, weights, alpha=group["weight_decay"])

        weight_norms = torch.stack(torch._foreach_norm(weights))
        update_norms = torch.stack(torch._foreach_norm(updates))
        # See _update_param for the zero-norm rule; here it is one vectorised where() for the whole chunk.
        ratios = torch.where(
            (weight_norms > 0) & (update_norms > 0),
            (weight_norms / update_norms).clamp(group["min_trust_ratio"], group["max_trust_ratio"]),
            torch.ones_like(weight_norms),
        )

        # Step sizes are host arithmetic on the host-side step counts: no device value is read.
        sizes = [_step_size(group, beta1, beta2, s["step"]) for s in states]
        if all(size == sizes[0] for size in sizes):
            scales = list((ratios * sizes[0]).unbind())
        else:  # tensors that missed steps (no gradient then) lag behind in bias correction
            scales = torch._foreach_mul(list(ratios.unbind()), sizes)
        torch._foreach_mul_(updates, scales)

        if params[0].dtype == torch.float32:
            torch._foreach_sub_(params, updates)
        else:
            torch._foreach_sub_(weights, updates)
            torch._foreach_copy_(params, weights)
        return ratios

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

        step_size = _step_size(group, beta1, beta2, state["step"])
        if param.dtype == torch.float32:
            param.sub_(update.mul_(ratio * step_size))
        else:
            param.copy_(weight.sub_(update.mul_(ratio * step_size)))
        return ratio

    def get_lamb_coeffs(self) -> list[float]:
        """Trust ratios applied in the last step, one per updated tensor (as ``FusedLamb.get_lamb_coeffs``).

        The order is that of the parameter groups and their parameters, skipping tensors without a gradient.
        Reading them synchronises with the device (one transfer per bucket); :meth:`step` itself never does.
        """
        coeffs = [0.0] * sum(len(positions) for positions, _ in self._last_trust_ratios)
        for positions, ratios in self._last_trust_ratios:
            for i, value in zip(positions, ratios.tolist()):
                coeffs[i] = value
        return coeffs


def _step_size(group: dict[str, Any], beta1: float, beta2: float, step: int) -> float:
    """``lr``, times FusedLamb's folded bias correction ``sqrt(1 - beta2**t) / (1 - beta1**t)`` when enabled."""
    if group["bias_correction"]:
        return group["lr"] * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
    return group["lr"]


def _foreach_chunks(params: list[torch.Tensor], positions: list[int]) -> list[list[tuple[torch.Tensor, int]]]:
    """``(param, position)`` pairs split into multi-tensor calls: one device and dtype each, at most
    :data:`FOREACH_CHUNK_ELEMENTS` elements each (:data:`CPU_FOREACH_CHUNK_ELEMENTS` on CPU; a bigger tensor
    alone), parameter order kept within a bucket."""
    buckets: dict[tuple[torch.device, torch.dtype], list[list[tuple[torch.Tensor, int]]]] = {}
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for param, i in zip(params, positions):
        key = (param.device, param.dtype)
        budget = CPU_FOREACH_CHUNK_ELEMENTS if param.device.type == "cpu" else FOREACH_CHUNK_ELEMENTS
        chunks = buckets.setdefault(key, [[]])
        if chunks[-1] and sizes[key] + param.numel() > budget:
            chunks.append([])
            sizes[key] = 0
        chunks[-1].append((param, i))
        sizes[key] = sizes.get(key, 0) + param.numel()
    return [chunk for chunks in buckets.values() for chunk in chunks]


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
