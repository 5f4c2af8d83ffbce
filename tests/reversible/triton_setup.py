"""What the Triton kernel tests share: Triton set up to run under its interpreter on CPU tensors
(or compiled on a GPU with REVNMT_TRITON_TEST_DEVICE=cuda), the device, and a forgetful cell with
a tensor-path buffer and a word stack holding the same heads. Import it before anything else
that might import triton."""
import os

DEVICE_NAME = os.environ.get("REVNMT_TRITON_TEST_DEVICE", "cpu")
if DEVICE_NAME == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: CPU tensors work

import pytest
import torch

triton = pytest.importorskip("triton")  # skips the importing module

from nmt.reversible import fused, triton_kernels  # noqa: E402
from nmt.reversible.buffer import InformationBuffer  # noqa: E402
from nmt.reversible.cells import RevGRUCell, RevLSTMCell  # noqa: E402
from nmt.reversible.fixed_point import FORGET_RADIX  # noqa: E402

import triton.language as tl  # noqa: E402

DEVICE = torch.device(DEVICE_NAME)
if (DEVICE.type == "cpu" and triton_kernels.interpreting()
        and type(tl.standard.cumsum).__name__ != "InterpretedFunction"):
    raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set, so its own "
                       "library would not run under the interpreter: set TRITON_INTERPRET=1 in "
                       "the environment of the run")
RUNNABLE = pytest.mark.skipif(
    not (triton_kernels.interpreting() if DEVICE.type == "cpu" else torch.cuda.is_available()),
    reason="Triton needs TRITON_INTERPRET=1 for CPU tensors, or a GPU")

R = FORGET_RADIX
BATCH, INPUT, HIDDEN, STORED = 8, 7, 301, 4  # odd hidden: halves of 151 and 150 units
CELLS = {"revgru": RevGRUCell, "revlstm": RevLSTMCell}


def setup_cell(name, max_forget_bits, *, seed=0, steps=3, random_heads=True):
    """A cell with forgetful gates, a tensor-path buffer and a word stack with the same heads,
    a state, inputs and padding masks (time, batch)."""
    torch.manual_seed(seed)
    cell = CELLS[name](INPUT, HIDDEN, max_forget_bits=max_forget_bits).to(DEVICE)
    with torch.no_grad():  # forget gates mostly small: many bits per step, words spill early
        for layer in cell.gates:
            layer.bias[: cell.half_sizes[0]] -= 1.5
    generator = torch.Generator().manual_seed(seed)
    shape = (BATCH, cell.half_sizes[0])
    buffer = InformationBuffer(shape, native=False, device=DEVICE)
    stack = fused.word_stack_for(cell, BATCH, device=DEVICE)
    if random_heads:
        heads = torch.randint(2**R, 2**(R + 16), shape, generator=generator).to(torch.int32)
        heads = heads.to(DEVICE)
        buffer.head.copy_(heads)
        stack.head.copy_(heads)
    state = tuple(torch.randint(-2**23, 2**23, (BATCH, size), generator=generator).to(DEVICE)
                  for size in cell.half_sizes * (cell.state_parts // 2))
    lengths = torch.tensor([steps, steps - 1, steps, 1, steps - 2, steps, 2, steps])
    masks = (torch.arange(steps).view(-1, 1) < lengths.view(1, -1)).to(DEVICE)
    with torch.no_grad():
        projected = cell.project_input(
            torch.randn(steps, BATCH, INPUT, generator=generator).to(DEVICE))
    return cell, buffer, stack, state, projected, masks


def assert_same_buffer(stack, buffer):
    assert torch.equal(stack.head, buffer.head)
    assert torch.equal(stack.stacked(), buffer.words())
    assert int(stack.pushed) == buffer.pushed_words()
    assert torch.equal(stack.hist, buffer._gates[""])
