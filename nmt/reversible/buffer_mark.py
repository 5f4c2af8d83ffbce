"""Where an information buffer stands (`BufferMark`) and what differs from it (`departure`):
the end-of-backward check that a run's reversal brought its buffer back, for every buffer kind
(InformationBuffer, the device-side StackBuffer)."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor


class BufferMark(NamedTuple):
    steps: int  # forward steps not yet reversed
    height: Union[int, Tensor]  # words on the stack
    heads: Tensor  # a 64-bit fingerprint of the heads (0-dim int64)


def departure(mark: BufferMark, steps: int, read_height: Callable[[], int],
              head: Tensor) -> Optional[str]:
    """What differs between a buffer (its forward steps, stack height read only when needed,
    heads) and `mark`, or None; shared by every buffer kind."""
    if steps != mark.steps:
        return f"has {steps - mark.steps} forward steps more than before the run"
    words = read_height() - int(mark.height)
    if words:
        return f"has {words} words more than before the run on its stack"
    if not torch.equal(head_fingerprint(head), mark.heads):
        return "has heads that differ from those before the run"
    return None


def head_fingerprint(head: Tensor) -> Tensor:
    """sum_i head_i * w_i with fixed odd 64-bit weights (int64 arithmetic wraps): any one
    changed head changes it, and nothing is drawn from a random generator."""
    index = torch.arange(head.numel(), dtype=torch.int64, device=head.device)
    weights = (index * 6364136223846793005 + 1442695040888963407) | 1
    return (head.reshape(-1).to(torch.int64) * weights).sum()
