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


def adam_step(params: torch.Tensor, grads: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor,
              lr: float, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step on [B, P] tensors; ``step`` [B] is each user's count BEFORE this step.

    Returns new (params, m, v, step); the inputs are not modified.
    """
    beta1, beta2 = betas
    step = step.to(torch.int64) + 1
    t = step.to(torch.float64).unsqueeze(1)
    bias_correction1 = 1.0 - beta1 ** t
    bias_correction2_sqrt = torch.sqrt(1.0 - beta2 ** t)
    step_size = (lr / bias_correction1).to(params.dtype)
    m = torch.lerp(m, grads, 1.0 - beta1)
    v = v * beta2 + (1.0 - beta2) * grads * grads
    denom = v.sqrt() / bias_correction2_sqrt.to(params.dtype) + eps
    return params - step_size * m / denom, m, v, step
