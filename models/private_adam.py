"""Adam on a batch of users' private parameters, each user with its own step count.

Users participate in different rounds, so the number of Adam steps each has
taken differs and so do their bias corrections; torch.optim.Adam keeps one
step count per parameter tensor, which would force one optimiser per user.
This is torch.optim.Adam's update (default: no amsgrad, no weight decay)
written with a step count per row, with the same floating-point operations in
the same order (lerp for the first moment, bias corrections in double
precision rounded to float32, ``(lr / bc1) * m / denom``), so a batch of one
gives torch's values exactly.
"""

from __future__ import annotations

import torch


def bias_corrections(step: torch.Tensor, steps: int, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's per-user factors of the next ``steps`` steps: (lr / bc1, sqrt(bc2)), each [B, steps] in ``dtype``.

    ``step`` [B] is each user's count before the first of them. They depend on the step counts alone, so
    a user's private steps can have them computed at once rather than a dozen small ops per step; the
    values are :func:`adam_step`'s own, element for element.
    """
    beta1, beta2 = betas
    t = (step.to(torch.int64).unsqueeze(1) + torch.arange(1, steps + 1)).to(torch.float64)
    return (lr / (1.0 - beta1 ** t)).to(dtype), torch.sqrt(1.0 - beta2 ** t).to(dtype)


def adam_step(params: torch.Tensor, grads: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor,
              lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              corrections: tuple[torch.Tensor, torch.Tensor] | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step on [B, P] tensors; ``step`` [B] is each user's count BEFORE this step.

    ``corrections``: this step's column ([B, 1] each) of :func:`bias_corrections`, when the caller
    computed a run of steps' at once. Returns new (params, m, v, step); the inputs are not modified.
    """
    beta1, beta2 = betas
    if corrections is None:
        corrections = bias_corrections(step, 1, lr, betas, params.dtype)
    step_size, bias_correction2_sqrt = corrections
    m = torch.lerp(m, grads, 1.0 - beta1)
    v = v * beta2 + (1.0 - beta2) * grads * grads
    denom = v.sqrt() / bias_correction2_sqrt + eps
    return params - step_size * m / denom, m, v, step.to(torch.int64) + 1
