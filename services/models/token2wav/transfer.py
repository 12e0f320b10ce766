"""Host → GPU copies that do not stall the host.

A plain `.to("cuda")` of a pageable CPU tensor synchronises the stream first, so every small
copy (noise, lengths, masks) made the host wait for all queued GPU work and left the GPU idle
while Python prepared the next call (the 64/128-stream profiles in docs/gpu-results.md). A
pinned copy with `non_blocking=True` is queued behind that work instead; PyTorch's caching
host allocator keeps the pinned block until the copy has run. Values are bit-identical.
"""

from __future__ import annotations

import torch


def to_device(
    x: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`x.to(device, dtype)`, without a host sync when `x` is on the CPU and `device` a GPU."""
    device = torch.device(device)
    if x.device.type != "cpu" or device.type != "cuda":
        return x.to(device, dtype) if dtype is not None else x.to(device)
    if dtype is not None:
        x = x.to(dtype)  # on the host, as .to(device, dtype) converts before copying
    return x.pin_memory().to(device, non_blocking=True)
