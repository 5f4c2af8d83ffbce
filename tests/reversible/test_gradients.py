"""Reversible mode gives the reference mode's loss bit for bit and its gradients to rounding."""
import pytest
import torch
from torch import nn

from nmt.reversible.sequence import MemoryMode, ReversibleRNN
from nmt.reversible.storage import AttentionStorage

STORAGES = {
    "none": None,
    "slice32": AttentionStorage("slice", 3, 32),
    "slice16": AttentionStorage("slice", 3, 16),
    "proj32": AttentionStorage("proj", 4, 32),
    "proj16": AttentionStorage("proj", 4, 16),
}
BATCH, STEPS, INPUT, HIDDEN = 4, 9, 5, 9
LENGTHS = torch.tensor([9, 6, 3, 1])


def _mask():
    return torch.arange(STEPS)[None] < LENGTHS[:, None]


def _assert_grads_close(reference, reversible, names):
    for name, a, b in zip(names, reference, reversible):
        assert a is not None and b is not None, f"no gradient for {name}"
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def _grads_of(tensors):
    grads = [t.grad.clone() if t.grad is not None else None for t in tensors]
    for t in tensors:
        t.grad = None
    return grads


def _initial(cell, generator):
    h = (torch.rand(2, BATCH, HIDDEN, generator=generator) - 0.5).requires_grad_()
    if cell == "revgru":
        return h, [h]
    c = (torch.rand(2, BATCH, HIDDEN, generator=generator) - 0.5).requires_grad_()
    return (h, c), [h, c]


@pytest.mark.parametrize("chunk_steps", [4, 16])  # chunks of 4, 4, 1 steps; one chunk
@pytest.mark.parametrize("storage", list(STORAGES))
@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_loss_is_bit_identical_and_gradients_agree(cell, storage, chunk_steps):
    """Two layers, padding, float inputs and initial state with gradients, storage in the loss."""
    torch.manual_seed(30)
    generator = torch.Generator().manual_seed(31)
    rnn = ReversibleRNN(cell, INPUT, HIDDEN, num_layers=2, max_forget_bits=2,
                        storage=STORAGES[storage], chunk_steps=chunk_steps)
    inputs = (torch.randn(BATCH, STEPS, INPUT, generator=generator) * 2).requires_grad_()
    initial, initial_leaves = _initial(cell, generator)
    final_weight = torch.randn(2, BATCH, HIDDEN, generator=generator)
    stored_weight = torch.randn(BATCH, STEPS, 4, generator=generator)
    leaves = [inputs] + initial_leaves + list(rnn.parameters())
    names = ["inputs"] + ["initial h", "initial c"][: len(initial_leaves)] + [
        name for name, _ in rnn.named_parameters()]
    results = {}
    for mode in MemoryMode:
        out = rnn(inputs, _mask(), mode=mode, initial_state=initial)
        final = out.final if cell == "revgru" else out.final[0] + out.final[1]
        loss = (final * final_weight).sum()
        if out.stored is not None:
            loss = loss + (out.stored * stored_weight[..., : out.stored.shape[2]]).sum()
        loss.backward()
        results[mode] = (loss.detach(), out.stored, _grads_of(leaves), out.buffer)
    (ref_loss, ref_stored, ref_grads, _), (rev_loss, rev_stored, rev_grads, buffer) = (
        results[MemoryMode.REFERENCE], results[MemoryMode.REVERSIBLE])
    assert torch.equal(ref_loss, rev_loss)
    if ref_stored is not None:
        assert torch.equal(ref_stored.detach(), rev_stored.detach())
        assert bool((rev_stored[3, 1:] == 0).all()), "padded steps store zeros"
    _assert_grads_close(ref_grads, rev_grads, names)
    assert all(g.abs().sum() > 0 for g in ref_grads[:3]), "degenerate test: zero gradients"
    assert buffer.is_initial(), "backward did not reverse the buffer completely"


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_steps_where_every_row_is_real_skip_the_masks_without_changing_anything(cell, monkeypatch):
    """The cells take mask=None on the leading steps where no row is padded (a CPU shortcut);
    runs that pass the mask on every step must give the same loss, storage and gradients."""
    import nmt.reversible.plan as sequence

    lengths = torch.tensor([9, 9, 7, 5])  # five leading steps without padding
    mask = torch.arange(STEPS)[None] < lengths[:, None]
    torch.manual_seed(32)
    generator = torch.Generator().manual_seed(33)
    rnn = ReversibleRNN(cell, INPUT, HIDDEN, num_layers=2, max_forget_bits=2,
                        storage=STORAGES["slice16"], chunk_steps=4)
    inputs = (torch.randn(BATCH, STEPS, INPUT, generator=generator) * 2).requires_grad_()
    weight = torch.randn(BATCH, STEPS, 3, generator=generator)
    results = []
    for full_steps in (sequence._leading_full_steps, lambda mask: 0):
        monkeypatch.setattr(sequence, "_leading_full_steps", full_steps)
        for mode in MemoryMode:
            out = rnn(inputs, mask, mode=mode)
            final = out.final if cell == "revgru" else out.final[0] + out.final[1]
            loss = final.sum() + (out.stored * weight).sum()
            loss.backward()
            results.append((loss.detach(), out.stored.detach(), _grads_of([inputs] + list(rnn.parameters()))))
    assert sequence._leading_full_steps.__name__ == "<lambda>"  # both ways ran
    first = results[0]
    for other in results[1:]:
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
    for with_shortcut, without in ((results[0], results[2]), (results[1], results[3])):
        assert all(torch.equal(a, b) for a, b in zip(with_shortcut[2], without[2]))


@pytest.mark.parametrize("storage", ["slice32", "slice16", "proj16"])
def test_gradient_reaching_stored_values_flows_into_the_recurrence(storage):
    torch.manual_seed(32)
    rnn = ReversibleRNN("revgru", INPUT, HIDDEN, num_layers=2, storage=STORAGES[storage])
    inputs = torch.randn(BATCH, STEPS, INPUT).requires_grad_()
    grads = {}
    for mode in MemoryMode:
        out = rnn(inputs, _mask(), mode=mode)
        (out.stored ** 2).sum().backward()  # the final state takes no part in the loss
        grads[mode] = _grads_of([inputs] + list(rnn.cells[0].parameters()))
    assert all(g.abs().sum() > 0 for g in grads[MemoryMode.REVERSIBLE])
    _assert_grads_close(grads[MemoryMode.REFERENCE], grads[MemoryMode.REVERSIBLE],
                        ["inputs"] + [n for n, _ in rnn.cells[0].named_parameters()])


class _Readout(nn.Module):
    """A per-step loss with attention over extra tensors, like a decoder's (batch-summed NLL)."""

    def __init__(self, hidden, keys, vocab, targets):
        super().__init__()
        self.query = nn.Linear(hidden, keys)
        self.out = nn.Linear(hidden + keys, vocab)
        self.targets = targets

    def forward(self, h, t, context, context_mask, tgt_mask):
        scores = (context @ self.query(h).unsqueeze(-1)).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~context_mask, -1e9), -1)
        attended = (weights.unsqueeze(-1) * context).sum(1)
        logits = self.out(torch.tanh(torch.cat([h, attended], -1)))
        nll = nn.functional.cross_entropy(logits, self.targets[:, t], reduction="none")
        return (nll * tgt_mask[:, t]).sum()


@pytest.mark.parametrize("device_offsets", [False, True])
@pytest.mark.parametrize("chunk_steps", [3, 16])
@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_encoder_and_decoder_sharing_a_buffer_match_the_reference(cell, chunk_steps, device_offsets):
    """Token ids + embeddings + fixed dropout masks (input and between layers), a proj-storing
    encoder, a decoder with a per-step readout attending over the encoder's storage and starting
    from its final state. device_offsets: the word stack as on CUDA (no count read per step)."""
    torch.manual_seed(33)
    vocab, emb = 13, 6
    src = torch.randint(0, vocab, (BATCH, STEPS))
    tgt = torch.randint(0, vocab, (BATCH, 7))
    src_mask = _mask()
    tgt_mask = torch.arange(7)[None] < torch.tensor([7, 2, 5, 4])[:, None]
    encoder = ReversibleRNN(cell, emb, HIDDEN, storage=AttentionStorage("proj", 4, 16),
                            chunk_steps=chunk_steps)
    decoder = ReversibleRNN(cell, emb, HIDDEN, num_layers=2, chunk_steps=chunk_steps)
    src_embedding, tgt_embedding = nn.Embedding(vocab, emb), nn.Embedding(vocab, emb)
    readout = _Readout(HIDDEN, 4, vocab, tgt)
    dropout = (torch.rand(BATCH, emb) > 0.3).float() / 0.7
    layer_dropout = (torch.rand(1, BATCH, HIDDEN) > 0.3).float() / 0.7
    modules = [encoder, decoder, src_embedding, tgt_embedding, readout]
    params = [p for m in modules for p in m.parameters()]
    names = [f"{type(m).__name__}.{n}" for m in modules for n, _ in m.named_parameters()]
    results = {}
    for mode in MemoryMode:
        buffer = encoder.new_buffer(BATCH, keep_words=mode is MemoryMode.REVERSIBLE,
                                    device_offsets=device_offsets)
        enc = encoder(src, src_mask, mode=mode, embedding=src_embedding, input_dropout=dropout,
                      buffer=buffer, tag="encoder")
        initial = enc.final.expand(2, -1, -1) if cell == "revgru" else tuple(
            part.expand(2, -1, -1) for part in enc.final)
        dec = decoder(tgt, tgt_mask, mode=mode, embedding=tgt_embedding, initial_state=initial,
                      buffer=buffer, readout=readout, tag="decoder", layer_dropout=layer_dropout,
                      readout_extras=(enc.stored, src_mask, tgt_mask.float()))
        dec.readout.backward()
        results[mode] = (dec.readout.detach(), _grads_of(params), buffer)
        if mode is MemoryMode.REVERSIBLE:
            assert buffer.pushed_words("encoder") > 0 and buffer.pushed_words("decoder") > 0
            assert buffer.is_initial()
    assert torch.equal(results[MemoryMode.REFERENCE][0], results[MemoryMode.REVERSIBLE][0])
    _assert_grads_close(results[MemoryMode.REFERENCE][1], results[MemoryMode.REVERSIBLE][1], names)
    assert all(g.abs().sum() > 0 for g in results[MemoryMode.REVERSIBLE][1])


def test_parameter_gradients_arrive_through_normal_accumulation():
    """Post-accumulate hooks (what DistributedDataParallel relies on) fire once per parameter."""
    torch.manual_seed(34)
    rnn = ReversibleRNN("revlstm", INPUT, HIDDEN, num_layers=2)
    fired = []
    for name, param in rnn.named_parameters():
        param.register_post_accumulate_grad_hook(lambda p, name=name: fired.append(name))
    out = rnn(torch.randn(BATCH, STEPS, INPUT), _mask(), mode=MemoryMode.REVERSIBLE)
    out.final[0].sum().backward()
    assert sorted(fired) == sorted(name for name, _ in rnn.named_parameters())
    first = [p.grad.clone() for p in rnn.parameters()]
    out = rnn(torch.randn(BATCH, STEPS, INPUT), _mask(), mode=MemoryMode.REVERSIBLE)
    out.final[0].sum().backward()  # accumulates like any autograd graph
    assert all(not torch.equal(p.grad, g) for p, g in zip(rnn.parameters(), first))


def test_without_grad_the_reversible_mode_runs_the_same_steps_and_keeps_no_words():
    torch.manual_seed(35)
    rnn = ReversibleRNN("revgru", INPUT, HIDDEN, num_layers=2, storage=STORAGES["proj16"])
    readout = nn.Linear(HIDDEN, 1)
    inputs = torch.randn(BATCH, STEPS, INPUT)

    def step_loss(h, t):
        return readout(h).sum()

    with_grad = rnn(inputs, _mask(), mode=MemoryMode.REVERSIBLE, readout=step_loss)
    with torch.no_grad():
        without = rnn(inputs, _mask(), mode=MemoryMode.REVERSIBLE, readout=step_loss)
    # with gradients the readout is evaluated once, while backward reverses: its total is
    # NaN until then, and the same number as the no-grad run's afterwards
    assert torch.isnan(with_grad.readout)
    with_grad.readout.backward()
    assert torch.equal(with_grad.readout.detach(), without.readout)
    assert torch.equal(with_grad.stored, without.stored)
    assert without.buffer.pushed_steps == 0 and not without.buffer.keep_words
    assert without.memory == with_grad.memory


def test_autocast_does_not_break_exactness():
    """Backward runs outside the caller's autocast; the gates must not depend on it."""
    torch.manual_seed(36)
    rnn = ReversibleRNN("revlstm", INPUT, HIDDEN, num_layers=2, storage=STORAGES["proj32"])
    inputs = torch.randn(BATCH, STEPS, INPUT).requires_grad_()
    results = {}
    for mode in MemoryMode:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = rnn(inputs, _mask(), mode=mode)
            loss = out.final[0].sum() + out.stored.sum()
        loss.backward()
        results[mode] = (loss.detach(), _grads_of([inputs] + list(rnn.parameters())), out.buffer)
    assert torch.equal(results[MemoryMode.REFERENCE][0], results[MemoryMode.REVERSIBLE][0])
    assert results[MemoryMode.REVERSIBLE][2].is_initial()
    _assert_grads_close(results[MemoryMode.REFERENCE][1], results[MemoryMode.REVERSIBLE][1],
                        ["inputs"] + [n for n, _ in rnn.named_parameters()])


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_inference_steps_match_a_full_run_bit_for_bit(cell):
    """Step-by-step decoding sees the very states and storage a whole-sequence run computes.
    (One thread: a run projects a chunk's inputs in one product, decoding one step's; BLAS may
    split rows differently across threads.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_inference_steps(cell)
    finally:
        torch.set_num_threads(threads)


def _check_inference_steps(cell):
    torch.manual_seed(37)
    rnn = ReversibleRNN(cell, INPUT, HIDDEN, num_layers=2, storage=STORAGES["slice16"])
    inputs = torch.randn(BATCH, STEPS, INPUT)
    generator = torch.Generator().manual_seed(38)
    initial, _ = _initial(cell, generator)
    tops = []
    full = rnn(inputs, _mask(), mode=MemoryMode.REFERENCE, initial_state=initial,
               readout=lambda h, t: tops.append(h.detach()) or h.sum())
    buffer = rnn.new_buffer(BATCH, keep_words=False)
    state = rnn.exact_state(initial, BATCH)
    for t in range(STEPS):
        state, top, stored = rnn.inference_step(inputs[:, t], state, buffer, _mask()[:, t])
        assert torch.equal(top, tops[t]) and torch.equal(stored, full.stored[:, t])
    assert all(torch.equal(a, b) for layer_a, layer_b in zip(state, full.final_state)
               for a, b in zip(layer_a, layer_b))


class _ChunkReadout(_Readout):
    """The same loss read a chunk of steps at a time (h: (batch, C, H))."""

    reads_chunks = True

    def forward(self, h, start, context, context_mask, tgt_mask):
        steps = range(start, start + h.shape[1])
        return torch.stack([super(_ChunkReadout, self).forward(h[:, i], t, context, context_mask,
                                                               tgt_mask)
                            for i, t in enumerate(steps)]).sum()


@pytest.mark.parametrize("chunk_steps", [2, 3, 16])
def test_a_chunk_readout_sees_every_step_once_in_both_modes(chunk_steps):
    """A readout over chunks gets each step's state exactly once per evaluation, with the right
    step indices, and gives the per-step readout's loss and gradients."""
    torch.manual_seed(39)
    targets = torch.randint(0, 7, (BATCH, STEPS))
    context, context_mask = torch.randn(BATCH, 5, 3), torch.ones(BATCH, 5, dtype=torch.bool)
    tgt_mask = _mask().float()
    rnn = ReversibleRNN("revgru", INPUT, HIDDEN, chunk_steps=chunk_steps)
    per_step, chunked = _Readout(HIDDEN, 3, 7, targets), _ChunkReadout(HIDDEN, 3, 7, targets)
    chunked.load_state_dict(per_step.state_dict())
    inputs = torch.randn(BATCH, STEPS, INPUT)
    seen, results = [], {}
    original = chunked.forward

    def recording(h, start, *extras):
        seen.append((start, h.shape[1]))
        return original(h, start, *extras)

    chunked.forward = recording
    for name, readout in (("per_step", per_step), ("chunked", chunked)):
        for mode in MemoryMode:
            seen.clear()
            out = rnn(inputs, _mask(), mode=mode, readout=readout,
                      readout_extras=(context, context_mask, tgt_mask))
            out.readout.backward()
            results[name, mode] = (out.readout.detach(), _grads_of(list(rnn.parameters())
                                                                  + list(readout.parameters())))
            if name == "chunked":
                expected = [(start, min(chunk_steps, STEPS - start))
                            for start in range(0, STEPS, chunk_steps)]
                # reference: once, in forward; reversible: once, in backward (last chunk first)
                assert seen == (expected if mode is MemoryMode.REFERENCE else expected[::-1])
    for mode in MemoryMode:
        torch.testing.assert_close(results["chunked", mode][0], results["per_step", mode][0])
        for a, b in zip(results["chunked", mode][1], results["per_step", mode][1]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert torch.equal(results["chunked", MemoryMode.REFERENCE][0],
                       results["chunked", MemoryMode.REVERSIBLE][0])


@pytest.mark.parametrize("where", ["head", "word"])
def test_every_reversible_backward_ends_with_an_exactness_check(where):
    from nmt.reversible import ReversalError

    torch.manual_seed(5)
    rnn = ReversibleRNN("revlstm", INPUT, HIDDEN, num_layers=2, chunk_steps=3)
    inputs = (torch.randn(BATCH, STEPS, INPUT) * 2).requires_grad_()
    out = rnn(inputs, mode=MemoryMode.REVERSIBLE, tag="encoder")
    out.final[0].sum().backward()  # exact: passes
    assert out.buffer.is_initial()
    out = rnn(inputs, mode=MemoryMode.REVERSIBLE, tag="encoder")
    if where == "head":
        out.buffer.head[1, 2] ^= 1 << 4
    else:
        out.buffer.words()[0] ^= 1 << 4  # the first word pushed: popped by the last step undone
    with pytest.raises(ReversalError, match=r"reversing encoder (was not exact|failed at step \d+)"):
        out.final[0].sum().backward()


def test_check_restored_names_the_run_the_layer_and_the_buffer():
    from nmt.reversible import InformationBuffer, ReversalError
    from nmt.reversible.checks import check_restored

    buffer = InformationBuffer((2, 3))
    mark = buffer.mark()
    initial = [tuple(torch.zeros(2, 3, dtype=torch.int64) for _ in range(2)) for _ in range(2)]
    check_restored(initial, initial, buffer, mark, tag="decoder")
    wrong = [initial[0], (initial[1][0], initial[1][1] + 1)]
    with pytest.raises(ReversalError, match=r"reversing decoder was not exact: layer 1's state "
                                            r"restored before step 0 differs"):
        check_restored(wrong, initial, buffer, mark, tag="decoder")
    buffer.head[1, 2] += 1
    with pytest.raises(ReversalError, match=r"information buffer has heads that differ"):
        check_restored(initial, initial, buffer, mark, tag="decoder")
