"""On CUDA the reversible time loop does not wait for the device at every step.

A host-device synchronisation per step (reading a word count to size a tensor) stalls the launch
queue and makes a step cost the GPU's whole latency. The word stack reads its height about once
per _SPARE_STEPS pushes instead; CUDA's sync debug mode counts every synchronisation."""
import warnings

import pytest
import torch

from nmt.reversible import MemoryMode, ReversibleRNN
from nmt.reversible.buffer import _SPARE_STEPS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _count_synchronisations(run) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_forward_and_backward_synchronise_rarely(cell):
    torch.manual_seed(0)
    steps, layers = 200, 2
    rnn = ReversibleRNN(cell, 32, 64, num_layers=layers, max_forget_bits=3).cuda()
    inputs = torch.randn(16, steps, 32, device="cuda", requires_grad=True)
    mask = torch.ones(16, steps, dtype=torch.bool, device="cuda")

    def train_step():
        out = rnn(inputs, mask, mode=MemoryMode.REVERSIBLE)
        final = out.final if cell == "revgru" else out.final[0]
        final.square().sum().backward()
        assert out.buffer.is_initial()

    train_step()  # warm-up: allocator, kernels
    pushes = steps * layers * rnn.state_parts  # one per state half (and cell half), layer and step
    synchronisations = _count_synchronisations(train_step)
    assert synchronisations <= pushes // _SPARE_STEPS + 20, (synchronisations, pushes)
