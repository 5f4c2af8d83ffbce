"""The fused C gate steps (native_steps.py) give the tensor code's results bit for bit."""
import pytest
import torch

from nmt.reversible import native_steps
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.fixed_point import FORGET_RADIX, forget_gate, from_fixed, to_fixed
from nmt.reversible.gated import gated_step, undo_step
from nmt.reversible.plan import MemoryMode
from nmt.reversible.sequence import ReversibleRNN
from nmt.reversible.storage import AttentionStorage


@pytest.fixture
def tensor_code(monkeypatch):
    """A context that turns the C kernels off (buffers made inside it use the tensor code)."""
    class _Off:
        def __enter__(self):
            monkeypatch.setenv("REVNMT_NATIVE", "0")

        def __exit__(self, *exc):
            monkeypatch.delenv("REVNMT_NATIVE")
    return _Off()


def _same_buffers(a, b):
    assert torch.equal(a.head, b.head) and a.pushed_steps == b.pushed_steps
    assert torch.equal(a.words(), b.words())
    assert a.pushed_words() == b.pushed_words() and a.optimal_bits() == b.optimal_bits()


@pytest.mark.parametrize("k", [1, 2, 3, 5, None])
@pytest.mark.parametrize("with_slope", [False, True])
def test_quantize_matches_the_tensor_code(k, with_slope, tensor_code):
    generator = torch.Generator().manual_seed(3)
    logits = torch.cat([torch.randn(200, 37, generator=generator) * 4,
                        torch.linspace(-40, 40, 200 * 37).view(200, 37)])
    logits[0, :4] = torch.tensor([0.0, float("inf"), -float("inf"), 1e-8])
    wide = torch.randn(50, 5 * 37, generator=generator)[:, 37:74]  # a split view, as cells give
    for x in (logits, wide):
        fused = forget_gate(x, k, with_slope=with_slope)
        assert native_steps.quantize(torch.sigmoid(x), n_min=1, forget_radix=FORGET_RADIX,
                                     with_slope=False) is not None
        with tensor_code:
            reference = forget_gate(x, k, with_slope=with_slope)
        assert len(fused) == len(reference)
        for a, b in zip(fused, reference):
            assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("stored_units", [0, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_gated_step_and_undo_match_the_tensor_code(stored_units, padded, tensor_code,
                                                   monkeypatch):
    fused_calls = []
    for name in ("gated_forget", "gated_unforget"):
        def spy(*args, _original=getattr(native_steps, name), **kwargs):
            result = _original(*args, **kwargs)
            fused_calls.append(result is not None)
            return result
        monkeypatch.setattr(native_steps, name, spy)
    generator = torch.Generator().manual_seed(5 + stored_units + padded)
    rows, cols = 7, 11
    fast = InformationBuffer((rows, cols + 2))
    with tensor_code:
        reference = InformationBuffer((rows, cols + 2))
    assert fast._native is not None and reference._native is None
    h = to_fixed(torch.rand(rows, cols, generator=generator) * 4 - 2)
    history = []
    for step in range(40):
        mask = torch.rand(rows, generator=generator) > 0.3 if padded else None
        z_q, n = forget_gate(torch.randn(rows, cols, generator=generator) * 3, 3)
        update = torch.randn(rows, cols, generator=generator) * 0.7
        value = from_fixed(h)
        kwargs = dict(mask=mask, stored_units=stored_units, tag="ab"[step % 2])
        exact, floats = gated_step(h, value, z_q, n, update, buffer=fast, **kwargs)
        with tensor_code:
            exact_ref, floats_ref = gated_step(h, value, z_q, n, update, buffer=reference, **kwargs)
        assert torch.equal(exact, exact_ref) and torch.equal(floats, floats_ref)
        _same_buffers(fast, reference)
        history.append((h, n, update, mask))
        h = exact
    for before, n, update, mask in reversed(history):
        restored = before[:, :stored_units] if stored_units else None
        back = undo_step(h, n, update, buffer=fast, mask=mask, restored=restored)
        with tensor_code:
            back_ref = undo_step(h, n, update, buffer=reference, mask=mask, restored=restored)
        assert torch.equal(back, back_ref) and torch.equal(back, before)
        _same_buffers(fast, reference)
        h = back
    assert fast.is_initial() and reference.is_initial()
    assert fused_calls.count(True) == 80  # every step of `fast` was fused (reference: None)


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
@pytest.mark.parametrize("layers", [1, 2])  # one RevLSTM layer: backward reads the kept gates
def test_a_reversible_run_is_bit_identical_with_and_without_fused_steps(cell, layers,
                                                                        tensor_code):
    def run():
        torch.manual_seed(7)
        rnn = ReversibleRNN(cell, 6, 10, num_layers=layers, max_forget_bits=3, chunk_steps=4,
                            storage=AttentionStorage("slice", 3, 32))
        generator = torch.Generator().manual_seed(8)
        x = torch.randn(5, 13, 6, generator=generator, requires_grad=True)
        mask = torch.arange(13)[None] < torch.tensor([13, 9, 13, 2, 11])[:, None]
        out = rnn(x, mask, mode=MemoryMode.REVERSIBLE)
        final = out.final if cell == "revgru" else out.final[0] * out.final[1]
        loss = (final * torch.linspace(-1, 1, 10)).sum() + out.stored.pow(2).sum()
        loss.backward()
        return [loss.detach(), x.grad] + [p.grad for p in rnn.parameters()]

    fused = run()
    with tensor_code:
        reference = run()
    for a, b in zip(fused, reference):
        assert torch.equal(a, b)


def test_from_fixed_matches_the_tensor_code(tensor_code):
    generator = torch.Generator().manual_seed(9)
    h = torch.cat([torch.randint(-2**40, 2**40, (300,), generator=generator),
                   torch.randint(-2**25, 2**25, (300,), generator=generator),
                   torch.tensor([0, 1, -1, 2**24 + 1, -(2**24 + 1), 2**53 + 1, -2**62, 3])])
    for x in (h, h.view(-1, 8), h.view(-1, 8)[:, 2:]):  # the last: tensor code (not contiguous)
        fast = from_fixed(x)
        with tensor_code:
            reference = from_fixed(x)
        assert fast.dtype == reference.dtype == torch.float32 and torch.equal(fast, reference)
    assert native_steps.from_fixed(h) is not None
