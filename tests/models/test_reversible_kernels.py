"""model.reversible.kernels: a whole Seq2Seq training step (reversible encoder and decoder) on the
fused Triton kernels (under TRITON_INTERPRET=1 on CPU tensors) against the tensor path.

- The loss is bit-identical (the forward integers are: the kernels do the tensor path's integer
  and IEEE arithmetic on the same torch-computed activations) and every gradient agrees to
  rtol 1e-4 / atol 1e-6: the fused backward kernels and their addmm fold the same sums in another
  order (d_other + d_reset * r + d_logits @ W as one addmm; per-element products grouped
  differently), so gradients differ from the tensor path's in the last bits (~1e-7).
- The shared buffer is a StackBuffer, back at its initial state after backward (backprop's
  end-of-backward check ran on it).
- No host synchronisation inside a chunk: every per-step piece of the model's one loop pair
  (ReversibleRNN.step, reverse_step, recompute_tape if called, backprop._backward_step) and, with
  fused products and the Triton readout, each readout block (StepLoss) runs under an OpCounter
  and issues no .item(), nonzero, masked_select, boolean index or device-to-host copy.
"""
import os

import pytest
import torch

from conftest import tiny_model_config
from nmt.config import ReversibleConfig
from nmt.errors import ConfigError
from nmt.models import build_model, reversible_decoder
from nmt.reversible import backprop, sequence
from nmt.reversible.launch_count import OpCounter
from nmt.reversible.stack_buffer import StackBuffer

triton = pytest.importorskip("triton")
from nmt.reversible import triton_kernels  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_kernels.interpreting(),
                                reason="kernels 'triton' on CPU tensors needs TRITON_INTERPRET=1")

CASES = [("revgru", 3, 1, "emb+slice"), ("revgru", 1, 2, "emb+proj"),
         ("revlstm", 2, 1, "emb+slice"), ("revlstm", 5, 2, "emb"), ("revgru", None, 1, "emb+slice")]


def _model(cell, k, layers, context, kernels, activate=False, products=False):
    torch.manual_seed(0)
    cfg = tiny_model_config(
        embedding_dim=12, dropout=0.2, init_uniform=0.3,
        encoder={"cell": cell, "layers": layers, "hidden": 14, "dropout": 0.2,
                 "max_forget_bits": k},
        decoder={"cell": cell, "layers": layers, "hidden": 14, "dropout": 0.2,
                 "max_forget_bits": k},
        attention={"context": context, "size": 4 if context != "emb" else None,
                   "precision": 16},
        reversible=ReversibleConfig(chunk_steps="3", kernels=kernels,
                                    fused_activations=activate, fused_products=products))
    model = build_model(cfg, 23, 23)
    model.decoder.fused_readout = False  # the torch readout: these tests are the recurrence's
    model.train()
    return model


def _training_step(model, batch):
    torch.manual_seed(1)  # the same dropout masks on both paths
    model.zero_grad(set_to_none=True)
    output = model.training_loss(batch, label_smoothing=0.1)
    output.loss.backward()
    return output


@pytest.mark.parametrize("cell,k,layers,context", CASES)
def test_fused_training_step_matches_tensor_path(cell, k, layers, context, make_batch):
    batch = make_batch(src_lengths=[6, 4, 2], tgt_lengths=[5, 7, 3], seed=2)
    torch_model = _model(cell, k, layers, context, "torch")
    fused_model = _model(cell, k, layers, context, "triton")
    expected = _training_step(torch_model, batch)
    buffers = []
    original = fused_model.encoder.new_buffer
    fused_model.encoder.new_buffer = lambda *a: buffers.append(original(*a)) or buffers[-1]
    got = _training_step(fused_model, batch)
    assert isinstance(buffers[0], StackBuffer)
    assert torch.equal(got.loss, expected.loss)
    for (name, ours), theirs in zip(fused_model.named_parameters(), torch_model.parameters()):
        assert (ours.grad is None) == (theirs.grad is None), name
        if ours.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert buffers[0].is_initial() and buffers[0].pushed_words() > 0
    # the counted figures charge the same heads, words, stored values and kept states on both
    # paths (activation_mib is measured storage: the word stack allocates in its own chunks)
    counted = {k: v for k, v in got.memory.as_dict().items() if not k.endswith("activation_mib")}
    assert counted == {k: v for k, v in expected.memory.as_dict().items()
                       if not k.endswith("activation_mib")}
    assert len(counted) >= 6 and counted["total_ratio"] > 1


@pytest.mark.parametrize("products", [False, True], ids=["activations", "products"])
@pytest.mark.parametrize("cell,k,layers,context", CASES[:4])
def test_fused_activations_reverse_exactly_with_close_gradients(cell, k, layers, context,
                                                                products, make_batch):
    """With the activations in the kernels (their own sigmoid / tanh: numpy's exp under the
    interpreter), and with `products` the recurrent products too (IEEE tl.dot), forward and
    reverse still agree: the run reverses exactly (backward's end check passes, the buffer is back
    at its start) and loss and gradients match the tensor path's to float tolerance (losses to
    1e-5; gradients to 1e-3 of their largest entry, see below)."""
    batch = make_batch(src_lengths=[6, 4, 2], tgt_lengths=[5, 7, 3], seed=2)
    expected = _training_step(torch_model := _model(cell, k, layers, context, "torch"), batch)
    fused_model = _model(cell, k, layers, context, "triton", activate=True, products=products)
    buffers = []
    original = fused_model.encoder.new_buffer
    fused_model.encoder.new_buffer = lambda *a: buffers.append(original(*a)) or buffers[-1]
    got = _training_step(fused_model, batch)
    assert buffers[0].activate and buffers[0].products == products and buffers[0].is_initial()
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    for (name, ours), theirs in zip(fused_model.named_parameters(), torch_model.parameters()):
        if ours.grad is not None:  # relative to the gradient's scale: a last-bit difference of
            # a sigmoid can move a quantised gate numerator by one (2**-10 of the gate) or flip a
            # 16-bit stored unit's rounding, which moves nearby gradient entries by ~1e-3
            scale = float(theirs.grad.abs().max())
            assert float((ours.grad - theirs.grad).abs().max()) <= 1e-3 * scale + 1e-6, name


@pytest.mark.parametrize("cell,products", [("revgru", False), ("revgru", True),
                                           ("revlstm", True)])
def test_no_host_synchronisation_inside_a_chunk(cell, products, make_batch, monkeypatch):
    """Every per-step piece of the fused training step, forward and backward, syncs nothing."""
    seen = []

    def watched(function):
        def run(*args, **kwargs):
            counter = OpCounter()
            with counter:
                result = function(*args, **kwargs)
            seen.append(counter.sync)
            return result
        return run

    monkeypatch.setattr(sequence.ReversibleRNN, "step", watched(sequence.ReversibleRNN.step))
    monkeypatch.setattr(sequence.ReversibleRNN, "reverse_step",
                        watched(sequence.ReversibleRNN.reverse_step))
    monkeypatch.setattr(sequence.ReversibleRNN, "recompute_tape",
                        watched(sequence.ReversibleRNN.recompute_tape))
    monkeypatch.setattr(backprop, "_backward_step", watched(backprop._backward_step))
    model = _model(cell, 3, 2, "emb+slice", "triton", products=products)
    if products:  # and the readout's blocks, with its Triton loss (no row selection)
        model.decoder.fused_readout = True
        monkeypatch.setattr(reversible_decoder.StepLoss, "forward",
                            watched(reversible_decoder.StepLoss.forward))
    _training_step(model, make_batch(src_lengths=[6, 4, 2], tgt_lengths=[5, 7, 3], seed=2))
    steps = 6 + 7  # source and target steps, each forward, reversed and backpropagated (the
    blocks = 3 if products else 0  # fused path keeps the reversal's tapes: no recompute_tape)
    assert len(seen) == 3 * steps + blocks  # target chunks of 3 steps, read in backward
    assert [sync for sync in seen if sync] == []


def test_the_detector_sees_a_sync(monkeypatch):
    """The check above would fail on a step that reads a device value on the host."""
    counter = OpCounter()
    with counter:
        mask = torch.ones(3, dtype=torch.bool)
        int(mask.sum())
        torch.masked_select(torch.arange(3), mask)
        torch.arange(3)[mask]  # a boolean index: its size is read on the host
        torch.arange(3)[torch.tensor([0, 2])]  # integer indices are not
    assert len(counter.sync) == 3


def test_kernels_setting_is_checked(make_batch, monkeypatch):
    from nmt.config import config_from_dict
    with pytest.raises(ConfigError, match="model.reversible.kernels"):
        config_from_dict({"model": {"reversible": {"kernels": "cuda"}}})
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # forced triton on a CPU without the interpreter
    model = _model("revgru", 3, 1, "emb+slice", "triton")
    with pytest.raises(ConfigError, match="model.reversible.kernels: .*TRITON_INTERPRET"):
        _training_step(model, make_batch(src_lengths=[3], tgt_lengths=[3]))
    auto = _model("revgru", 3, 1, "emb+slice", "auto")  # auto on a CPU: the tensor path
    assert auto.encoder.rnn.kernels == "auto"
    assert not isinstance(auto.encoder.new_buffer(2, torch.device("cpu")), StackBuffer)
    assert os.environ["TRITON_INTERPRET"] == "0"


def test_forced_triton_without_triton_is_a_config_error(make_batch, monkeypatch):
    monkeypatch.setattr(triton_kernels, "triton", None)  # as if Triton were not installed
    model = _model("revgru", 3, 1, "emb+slice", "triton")
    with pytest.raises(ConfigError, match="model.reversible.kernels: .*Triton is not importable"):
        _training_step(model, make_batch(src_lengths=[3], tgt_lengths=[3]))
    auto = _model("revgru", 3, 1, "emb+slice", "auto")  # auto falls back to the tensor path
    _training_step(auto, make_batch(src_lengths=[3], tgt_lengths=[3]))
