"""ReversibleRNN with kernels="triton": the one run loop on the fused kernels (under the
interpreter on CPU tensors). Its reversal is checked like the tensor path's: check_reversal
passes, and the end-of-backward check catches a buffer disturbed between forward and backward."""
from triton_setup import RUNNABLE  # noqa: F401  (sets up the interpreter first)

import pytest
import torch

from nmt.reversible import MemoryMode, ReversalError, ReversibleRNN, check_reversal
from nmt.reversible.stack_buffer import StackBuffer

pytestmark = RUNNABLE


def _run(cell, kernels="triton"):
    torch.manual_seed(0)
    rnn = ReversibleRNN(cell, 6, 10, num_layers=2, chunk_steps=3, kernels=kernels)
    x = torch.randn(3, 7, 6, requires_grad=True)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    return rnn, x, mask


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_check_reversal_on_the_fused_path(cell):
    rnn, x, mask = _run(cell)
    assert isinstance(rnn.new_buffer(3), StackBuffer)
    result = check_reversal(rnn, x.detach(), mask, exact=True)
    assert result.exact and result.buffer_initial, result.reason


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_end_of_backward_check_runs_on_the_fused_path(cell):
    rnn, x, mask = _run(cell)
    out = rnn(x, mask, mode=MemoryMode.REVERSIBLE)
    assert isinstance(out.buffer, StackBuffer)
    loss = sum(part.sum() for part in out.final) if isinstance(out.final, tuple) else out.final.sum()
    out.buffer.head[0, 0] += 1  # one head disturbed between forward and backward
    with pytest.raises(ReversalError, match="not exact"):
        loss.backward()


def test_fused_run_gives_the_tensor_paths_final_state_and_gradients():
    results = []
    for kernels in ("torch", "triton"):
        rnn, x, mask = _run("revgru", kernels)
        out = rnn(x, mask, mode=MemoryMode.REVERSIBLE)
        (out.final ** 2).sum().backward()
        assert out.buffer.is_initial()
        results.append((out.final.detach(), [p.grad for p in rnn.parameters()] + [x.grad]))
    (final_a, grads_a), (final_b, grads_b) = results
    assert torch.equal(final_a, final_b)  # forward integers bit for bit
    for a, b in zip(grads_a, grads_b):  # the fused backward sums in another order
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
