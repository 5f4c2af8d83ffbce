"""Reversible seq2seq on real Multi30K sentences with padding (issue #4, items 1-3).

1. The reversible training step's loss equals the plain-autograd step of the same fixed-point
   model bit for bit; every parameter gradient agrees (rtol 1e-4, atol 1e-6).
2. After backward, the reconstructed initial states equal the true ones and the shared buffer is
   back at its initial state.
3. Inference (head-only buffer, step by step) reproduces the training path's decoder states bit
   for bit, so translations are identical with and without the buffer code path.
"""
import copy
import gzip
import itertools

import pytest
import torch

from conftest import tiny_model_config
from nmt.config import TokenizerConfig
from nmt.data.batching import collate
from nmt.data.tokenizer import Tokenizer, train_sentencepiece
from nmt.models import build_model
from nmt.models.embeddings import BOS_ID, EOS_ID, PAD_ID
from nmt.reversible import MemoryMode, ReversibleRNN
from nmt.search import beam_search, greedy_search

CELLS = ("revgru", "revlstm")
CONTEXTS = ("emb+slice", "emb+proj")


def _lines(directory, name, count):
    with gzip.open(directory / name, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in itertools.islice(handle, count)]


@pytest.fixture(scope="module")
def multi30k(multi30k_dir):
    """A 300-piece joint sentencepiece on 2000 training pairs, and a few real validation pairs."""
    en, de = _lines(multi30k_dir, "train.en.gz", 2000), _lines(multi30k_dir, "train.de.gz", 2000)
    settings = TokenizerConfig(vocab_size=300, byte_fallback=False)
    tokenizer = Tokenizer(train_sentencepiece(en + de, settings))
    val_en, val_de = _lines(multi30k_dir, "val.en.gz", 60), _lines(multi30k_dir, "val.de.gz", 60)
    pairs = sorted(zip(tokenizer.encode_src_lines(val_en), tokenizer.encode_tgt_lines(val_de)),
                   key=lambda pair: len(pair[0]) + len(pair[1]))[::10]  # 6 short to long pairs
    batch = collate([src for src, _ in pairs], [tgt for _, tgt in pairs], list(range(len(pairs))))
    assert len(set(batch.src_lengths.tolist())) > 1 and len(set(batch.tgt_lengths.tolist())) > 1
    return tokenizer, batch


def _model(tokenizer, cell, context, layers, *, dropout=0.25, seed=0, readout_dropout="sequence"):
    torch.manual_seed(seed)
    cfg = tiny_model_config(
        embedding_dim=16, dropout=dropout, init_uniform=0.3, readout_dropout=readout_dropout,
        encoder={"cell": cell, "layers": layers, "hidden": 16, "dropout": dropout},
        decoder={"cell": cell, "layers": layers, "hidden": 16, "dropout": dropout},
        attention={"context": context, "size": 4, "precision": 16})
    return build_model(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)


def _reference_twin(model):
    """A copy to run with mode=MemoryMode.REFERENCE (plain autograd over the same steps)."""
    return copy.deepcopy(model)


def _step_both_and_compare(model, reference, batch, *, seed):
    """One training step of each (the same locked dropout masks): bit-identical losses and
    gradients that agree to rounding. Returns {"reversible": ..., "reference": ...} outputs."""
    outputs = {}
    for name, net in (("reversible", model), ("reference", reference)):
        torch.manual_seed(seed)
        mode = MemoryMode.REFERENCE if name == "reference" else None
        outputs[name] = net.training_loss(batch, label_smoothing=0.1, mode=mode)
        outputs[name].loss.backward()
    assert torch.equal(outputs["reversible"].loss, outputs["reference"].loss)
    for (name, mine), (_, theirs) in zip(model.named_parameters(), reference.named_parameters()):
        assert (mine.grad is None) == (theirs.grad is None), name
        if theirs.grad is not None:
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
    return outputs


@pytest.mark.parametrize("cell,context,layers", list(itertools.product(CELLS, CONTEXTS, (1, 2))))
def test_reversible_step_matches_plain_autograd(multi30k, cell, context, layers):
    tokenizer, batch = multi30k
    model = _model(tokenizer, cell, context, layers)
    reference = _reference_twin(model)
    outputs = _step_both_and_compare(model, reference, batch, seed=7)
    assert outputs["reversible"].nll == outputs["reference"].nll
    encoder_grads = [p.grad for n, p in model.named_parameters() if n.startswith("encoder.rnn")]
    assert encoder_grads and all(g is not None and g.abs().sum() > 0 for g in encoder_grads)
    memory = outputs["reversible"].memory
    assert set(memory) >= {"encoder_ratio", "decoder_ratio", "encoder_optimal_ratio",
                           "decoder_optimal_ratio", "activation_mib"}
    assert memory["encoder_ratio"] > 1 and memory["decoder_ratio"] > 1


@pytest.mark.parametrize("cell", CELLS)
def test_per_step_readout_dropout_matches_plain_autograd(multi30k, cell):
    """readout_dropout: step draws a_t's mask per step and the context's per position, as a plain
    model does; the reversible step still gives the plain-autograd loss bit for bit, though it
    reads the steps in another order (masks come from per-step seeds)."""
    tokenizer, batch = multi30k
    model = _model(tokenizer, cell, "emb+slice", 1, readout_dropout="step")
    assert model.decoder.per_step_dropout and model.encoder.per_step_dropout
    outputs = _step_both_and_compare(model, _reference_twin(model), batch, seed=7)
    locked = _model(tokenizer, cell, "emb+slice", 1)
    torch.manual_seed(7)
    assert not torch.equal(locked.training_loss(batch, label_smoothing=0.1).loss,
                           outputs["reversible"].loss)  # the option changes the masks

    torch.manual_seed(3)
    context = model.encoder(batch.src, batch.src_lengths).context.detach()
    dropped = context == 0
    assert dropped.any() and not torch.equal(dropped[:, 0], dropped[:, 1])  # per position


def test_step_dropout_masks_are_per_step_and_independent_of_reading_order():
    from nmt.models.reversible_decoder import StepDropout

    torch.manual_seed(0)
    dropout = StepDropout(0.5, 4, 32, torch.device("cpu"))
    whole = dropout.masks(0, 6)
    assert whole.shape == (4, 6, 32) and set(whole.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(whole[:, 0], whole[:, 1])
    for start, steps in ((4, 2), (0, 3), (5, 1)):  # chunks read in any order
        assert torch.equal(dropout.masks(start, steps), whole[:, start:start + steps])
    assert abs(float((whole == 0).float().mean()) - 0.5) < 0.1


def _record_reversals(monkeypatch, rnn: ReversibleRNN, into: list):
    original = rnn.reverse_step

    def recorded(*args, **kwargs):
        previous = original(*args, **kwargs)
        into.append(previous)
        return previous

    monkeypatch.setattr(rnn, "reverse_step", recorded)


@pytest.mark.parametrize("cell,context,layers", [("revgru", "emb+slice", 2),
                                                 ("revlstm", "emb+proj", 1),
                                                 ("revlstm", "emb+slice", 2)])
def test_backward_restores_initial_states_and_empties_the_buffer(multi30k, monkeypatch, cell,
                                                                 context, layers):
    tokenizer, batch = multi30k
    model = _model(tokenizer, cell, context, layers)
    encoder_steps, decoder_steps = [], []
    _record_reversals(monkeypatch, model.encoder.rnn, encoder_steps)
    _record_reversals(monkeypatch, model.decoder.rnn, decoder_steps)
    torch.manual_seed(3)
    encoder_output = model.encode(batch.src, batch.src_lengths)
    buffer = encoder_output.buffer
    loss = model.decoder.training_loss(batch.tgt_in, batch.tgt_out, encoder_output,
                                       label_smoothing=0.1).loss
    # both sides' words are kept until backward reverses the decoder, then the encoder
    steps = batch.src.shape[1] + batch.tgt_in.shape[1]
    assert buffer.pushed_steps == steps * layers * model.encoder.rnn.state_parts
    loss.backward()
    assert len(encoder_steps) == batch.src.shape[1] and len(decoder_steps) == batch.tgt_in.shape[1]
    batch_size = batch.src.shape[0]
    zero = model.encoder.rnn.exact_state(None, batch_size)
    true_decoder_start = model.decoder.rnn.exact_state(
        model.decoder.initial_state(encoder_output), batch_size)
    for restored, true in ((encoder_steps[-1], zero), (decoder_steps[-1], true_decoder_start)):
        for restored_layer, true_layer in zip(restored, true):
            assert all(torch.equal(a, b) for a, b in zip(restored_layer, true_layer))
    assert any(part.abs().sum() > 0 for layer in true_decoder_start for part in layer)
    assert buffer.is_initial()


def _trained(tokenizer, batch, cell, context, steps=3):
    model = _model(tokenizer, cell, context, 1, dropout=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        model.training_loss(batch, label_smoothing=0.1).loss.backward()
        optimizer.step()
    return model


def _record_queries(monkeypatch, model, into: list):
    readout = model.decoder.readout
    original = type(readout).attentional.__get__(readout)  # unwrapped, even when re-recording

    def recorded(h, *args, **kwargs):
        into.append(h.detach().clone())
        return original(h, *args, **kwargs)

    monkeypatch.setattr(readout, "attentional", recorded)


@pytest.mark.parametrize("cell,context", [("revgru", "emb+slice"), ("revlstm", "emb+proj")])
def test_inference_from_checkpoint_matches_the_buffer_code_path(multi30k, tmp_path, monkeypatch,
                                                                cell, context):
    tokenizer, batch = multi30k
    trained = _trained(tokenizer, batch, cell, context)
    torch.save({"model": trained.state_dict()}, tmp_path / "rev.pt")
    model = _model(tokenizer, cell, context, 1, dropout=0.1, seed=99)
    model.load_state_dict(torch.load(tmp_path / "rev.pt", weights_only=True)["model"])
    model.eval()
    src, lengths = batch.src, batch.src_lengths
    hypotheses = greedy_search(model, src, lengths, max_len_ratio=1.0, max_len_offset=4)
    outputs = [h.tokens for h in hypotheses]
    assert any(len(tokens) > 2 for tokens in outputs)
    # The same words teacher-forced through the training path: a reversible run whose buffer
    # keeps its words and continues the encoder's; its backward reads the queries chunk by chunk,
    # last chunk first.
    tgt_in = torch.zeros(len(outputs), max(len(t) for t in outputs) + 1, dtype=torch.long)
    tgt_out = torch.zeros_like(tgt_in)
    for row, tokens in enumerate(outputs):
        tgt_in[row, : len(tokens) + 1] = torch.tensor([BOS_ID] + tokens)
        tgt_out[row, : len(tokens) + 1] = torch.tensor(tokens + [EOS_ID])
    training_queries, inference_queries = [], []
    _record_queries(monkeypatch, model, training_queries)
    with torch.enable_grad():
        encoder_output = model.encode(src, lengths)
        assert encoder_output.buffer.keep_words
        loss = model.decoder.training_loss(tgt_in, tgt_out, encoder_output).loss
        assert not training_queries  # nothing is read before backward
        loss.backward()
    training_queries = list(torch.cat(training_queries[::-1], dim=1).unbind(1))  # chunks -> steps
    _record_queries(monkeypatch, model, inference_queries)
    with torch.no_grad():
        encoder_output = model.encode(src, lengths)
        assert not encoder_output.buffer.keep_words
        state = model.init_decoder_state(encoder_output)
        predicted = []
        for t in range(tgt_in.shape[1]):
            log_probs, state = model.decode_step(tgt_in[:, t], state, encoder_output)
            predicted.append(log_probs.argmax(-1))
    real = tgt_out != PAD_ID
    lengths_out = torch.tensor([len(tokens) for tokens in outputs])
    assert len(training_queries) == len(inference_queries) == tgt_in.shape[1]
    for t, (trained_h, inferred_h) in enumerate(zip(training_queries, inference_queries)):
        assert torch.equal(trained_h[real[:, t]], inferred_h[real[:, t]]), f"step {t}"
        logits = model.decoder.readout.output(model.decoder.readout.attentional(
            trained_h, encoder_output.keys, encoder_output.context, encoder_output.mask)[0])
        chosen = t < lengths_out  # the searched words (a length-limited output has no EOS)
        assert torch.equal(logits.argmax(-1)[chosen], tgt_out[chosen, t])
        assert torch.equal(predicted[t][chosen], tgt_out[chosen, t])
    # Dropping the encoder's buffer head changes the decoder's low bits: the head matters.
    with torch.no_grad():
        state = model.init_decoder_state(encoder_output)
        state.buffer.head.fill_(state.buffer.lower)
        _, fresh = model.decode_step(tgt_in[:, 0], state, encoder_output)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state[0], _first_state(model, tgt_in,
                                                                                   encoder_output)))
    # Beam search reorders the head-only buffer with the beams; beam 1 is greedy.
    beams = beam_search(model, src, lengths, beam_size=1, max_len_ratio=1.0, max_len_offset=4)
    assert [b[0].tokens for b in beams] == outputs
    assert len(beam_search(model, src, lengths, beam_size=3, max_len_ratio=1.0,
                           max_len_offset=4)) == len(outputs)


def _first_state(model, tgt_in, encoder_output):
    with torch.no_grad():
        _, state = model.decode_step(tgt_in[:, 0], model.init_decoder_state(encoder_output),
                                     encoder_output)
    return state.state[0]


def test_hidden_context_stores_every_state_only_without_memory_saving(multi30k):
    """The paper's 300H row: `memory_saving: false` keeps every encoder state for attention;
    the decoder stays reversible and still matches plain autograd."""
    from nmt.config import config_from_dict
    from nmt.errors import ConfigError

    rejected = {"model": {"encoder": {"cell": "revgru", "hidden": 16},
                          "decoder": {"cell": "revgru", "hidden": 16},
                          "attention": {"context": "hidden"}, "embedding_dim": 16}}
    with pytest.raises(ConfigError, match="model.encoder.memory_saving: false"):
        config_from_dict(rejected)
    rejected["model"]["encoder"]["memory_saving"] = False
    assert config_from_dict(rejected).model.encoder.memory_saving is False

    tokenizer, batch = multi30k
    torch.manual_seed(0)
    cfg = tiny_model_config(
        embedding_dim=16, dropout=0.2,
        encoder={"cell": "revlstm", "hidden": 16, "dropout": 0.2, "memory_saving": False},
        decoder={"cell": "revlstm", "hidden": 16, "dropout": 0.2},
        attention={"context": "hidden"})
    model = build_model(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    assert model.encoder.context_size == 16
    reference = _reference_twin(model)
    outputs = _step_both_and_compare(model, reference, batch, seed=5)
    assert outputs["reversible"].memory["encoder_ratio"] == 1.0
    assert outputs["reversible"].memory["decoder_ratio"] > 1.0
    # attention reads the top states themselves: they differ from the embeddings and are zero
    # on padding
    with torch.no_grad():
        context = model.eval().encode(batch.src, batch.src_lengths).context
    padding = batch.src == PAD_ID
    assert padding.any() and torch.equal(context[padding], torch.zeros_like(context[padding]))
    assert context.abs().sum() > 0


@pytest.mark.parametrize("cell", CELLS)
def test_verify_reversal_of_the_whole_model(multi30k, monkeypatch, cell):
    """The trainer's drift check (nmt.reversal_drift) on the reversible encoder and decoder."""
    from nmt.reversal_drift import reversal_check_for
    from nmt.reversible.buffer import InformationBuffer

    tokenizer, batch = multi30k
    model = _model(tokenizer, cell, "emb+slice", 2)
    check = reversal_check_for(model)
    assert check(batch) is None
    original, original_fused = InformationBuffer.unforget, InformationBuffer.fused_unforget

    def corrupted(self, h, n):  # one flipped low bit on the way back
        out = original(self, h, n)
        out[0, 0] ^= 1
        return out

    def corrupted_fused(self, h, n, run):  # the same in the fused CPU step (native_steps.py)
        out = original_fused(self, h, n, run)
        if out is not None:
            out[0, 0] ^= 1
        return out

    monkeypatch.setattr(InformationBuffer, "unforget", corrupted)
    monkeypatch.setattr(InformationBuffer, "fused_unforget", corrupted_fused)
    assert check(batch).startswith("decoder")


def test_no_logits_tensor_for_the_whole_target_is_held(multi30k):
    """Per-step readout: what autograd holds after the forward pass does not grow with the target
    length (the plain decoder's grows by at least the (batch, tgt_len, vocab) log-probs)."""
    from nmt.bench.common import SavedBytes

    tokenizer, batch = multi30k
    src = [row[: length - 1].tolist() for row, length in zip(batch.src, batch.src_lengths)]
    tgt = [row[: length - 1].tolist() for row, length in zip(batch.tgt_out, batch.tgt_lengths)]
    short = collate(src, tgt, list(range(len(src))))
    long = collate(src, [t * 3 for t in tgt], list(range(len(src))))
    extra_logits = (long.num_tgt_tokens - short.num_tgt_tokens) * tokenizer.tgt_vocab_size * 4

    def held(model, batch):
        with SavedBytes(list(model.parameters())) as saved:
            output = model.training_loss(batch, label_smoothing=0.1)
        held_bytes = saved.bytes
        output.loss.backward()
        return held_bytes

    reversible = _model(tokenizer, "revgru", "emb+slice", 1, dropout=0.0)
    growth = held(reversible, long) - held(reversible, short)
    assert growth < extra_logits / 20
    plain = build_model(tiny_model_config(
        embedding_dim=16, encoder={"cell": "gru", "hidden": 16},
        decoder={"cell": "gru", "hidden": 16},
        attention={"context": "emb+slice", "size": 4}),
        tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    assert held(plain, long) - held(plain, short) > extra_logits  # the reference point


def test_reversible_encoder_before_a_plain_decoder(multi30k):
    """revgru -> gru: the encoder alone is reversible, pays the buffer's heads and reports its
    ratio; its reversible backward matches plain autograd."""
    tokenizer, batch = multi30k
    torch.manual_seed(0)
    cfg = tiny_model_config(embedding_dim=16, dropout=0.2,
                            encoder={"cell": "revgru", "hidden": 16, "dropout": 0.2},
                            decoder={"cell": "gru", "hidden": 16, "dropout": 0.0},
                            attention={"context": "emb+proj", "size": 4})
    model = build_model(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    reference = copy.deepcopy(model)
    outputs = _step_both_and_compare(model, reference, batch, seed=5)
    memory = outputs["reversible"].memory
    assert memory["encoder_ratio"] > 1 and "decoder_ratio" not in memory
    account = memory.encoder
    head = 32 * batch.src.shape[0] * 8  # int32 heads, one per sentence and half-state unit
    assert account.buffer_head_bits == head and memory.total.used_bits == account.used_bits
    assert account.used_bits == (head + account.buffer_word_bits + account.stored_bits
                                 + account.final_state_bits + account.initial_state_bits)


def test_reversible_encoder_under_a_reference_decoder(multi30k):
    """Mixed modes: a plain-autograd decoder leaves the shared buffer as the encoder left it,
    so the encoder's reversal is still exact."""
    tokenizer, batch = multi30k
    model = _model(tokenizer, "revlstm", "emb+proj", 2)
    reference = _reference_twin(model)
    losses, buffers = [], []
    for net, encoder_mode in ((model, None), (reference, MemoryMode.REFERENCE)):
        torch.manual_seed(2)
        encoder_output = net.decoder.attach(net.encoder(batch.src, batch.src_lengths,
                                                        mode=encoder_mode))
        loss = net.decoder.training_loss(batch.tgt_in, batch.tgt_out, encoder_output,
                                         mode=MemoryMode.REFERENCE).loss
        loss.backward()
        losses.append(loss)
        buffers.append(encoder_output.buffer)
    assert torch.equal(*losses)
    assert buffers[0].is_initial()  # the reversible encoder undid exactly its own steps
    for (name, mine), (_, theirs) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
