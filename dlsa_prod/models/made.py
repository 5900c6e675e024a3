"""MADE: masked autoencoder for distribution estimation, one affine autoregressive flow step.

u = (x - m(x)) * exp(-a(x)), log|det du/dx| = -sum a(x); m, a depend only on earlier inputs.
The log-scale a is soft-clamped, a = c * tanh(a_raw / c), so training cannot overflow exp().
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_degrees(input_size: int, hidden_size: int, n_hidden: int, input_degrees: torch.Tensor,
                 order: str, generator: torch.Generator | None) -> list[torch.Tensor]:
    degrees = [input_degrees]
    for _ in range(n_hidden):
        if order == "sequential":
            degrees.append(torch.arange(hidden_size) % max(input_size - 1, 1))
        else:
            low = int(degrees[-1].min().item())
            high = max(input_size - 1, low + 1)
            degrees.append(torch.randint(low, high, (hidden_size,), generator=generator))
    return degrees


class MADE(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, n_hidden: int, input_degrees: torch.Tensor,
                 order: str = "sequential", log_scale_clamp: float = 10.0, generator: torch.Generator | None = None):
        super().__init__()
        if input_size < 2:
            raise ValueError("MADE needs an input of at least 2 dimensions")
        degrees = made_degrees(input_size, hidden_size, n_hidden, input_degrees, order, generator)
        self.register_buffer("input_degrees", input_degrees.clone())
        layers: list[nn.Module] = []
        sizes = [input_size] + [hidden_size] * n_hidden
        for i in range(n_hidden):
            mask = (degrees[i + 1].unsqueeze(1) >= degrees[i].unsqueeze(0))
            layers += [MaskedLinear(sizes[i], sizes[i + 1], mask), nn.ReLU()]
        out_mask = (degrees[0].unsqueeze(1) > degrees[-1].unsqueeze(0)).repeat(2, 1)
        layers.append(MaskedLinear(hidden_size, 2 * input_size, out_mask))
        self.net = nn.Sequential(*layers)
        self.log_scale_clamp = float(log_scale_clamp)

    def shift_and_log_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, a = self.net(x).to(x.dtype).chunk(2, dim=1)  # autocast: back to x's precision
        c = self.log_scale_clamp
        return m, c * torch.tanh(a / c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, a = self.shift_and_log_scale(x)
        return (x - m) * torch.exp(-a), -a.sum(1)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(u)
        for i in torch.argsort(self.input_degrees).tolist():
            m, a = self.shift_and_log_scale(x)
            x[:, i] = u[:, i] * torch.exp(a[:, i]) + m[:, i]
        return x
