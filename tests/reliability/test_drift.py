"""One flipped bit in the information buffer makes the reversal check fail loudly."""
import pytest
import torch

from nmt.data.batching import collate
from nmt.optim import LearningRateSchedule
from nmt.reversible import ReversibleRNN, check_reversal
from nmt.reversible.checks import compare_reversal, record_run
from nmt.stats import TrainingStats
from nmt.training import Trainer, TrainingStopped
from revtoy import ReversibleToyModel, toy_corpus, train_cfg

STEPS = 30


def recorded_run(seed: int = 0, *, layers: int = 2):
    torch.manual_seed(seed)
    rnn = ReversibleRNN("revgru", 8, 16, num_layers=layers, max_forget_bits=3)
    inputs = torch.randn(4, STEPS, 8) * 2
    return rnn, record_run(rnn, inputs, exact=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_runs_pass(seed):
    rnn, record = recorded_run(seed)
    buffer = record.plan.buffer
    assert buffer.pushed_steps == STEPS * 2 * 2  # one push per half, layer and step
    assert buffer.words().numel() > 0  # words to pop: a real check
    assert compare_reversal(rnn, record).exact


@pytest.mark.parametrize("element", [(0, 0), (2, 5), (3, 7)])
def test_one_bit_in_a_head_is_caught_with_step_layer_and_difference(element):
    rnn, record = recorded_run()
    record.plan.buffer.head[element] ^= 1
    drift = compare_reversal(rnn, record)
    assert not drift.exact
    assert drift.first_mismatch == STEPS - 1  # the first step reversed already goes wrong
    assert drift.layer in (0, 1) and drift.largest_difference > 0
    message = drift.describe("encoder")
    assert f"encoder layer {drift.layer} at time step {STEPS - 1}" in message
    assert "largest difference" in message and "\n" not in message


def test_one_bit_in_a_pushed_word_is_caught_where_it_is_popped():
    rnn, record = recorded_run()
    words = record.plan.buffer.words()  # fault injection into the stored words (a view of the stack)
    words[-1] ^= 1 << 3  # the last word pushed: popped by the first reverse steps that refill
    drift = compare_reversal(rnn, record)
    assert not drift.exact and drift.first_mismatch is not None
    assert drift.largest_difference > 0


def test_verify_reversal_accepts_ids_with_an_embedding():
    torch.manual_seed(3)
    rnn = ReversibleRNN("revlstm", 6, 10, num_layers=1)
    ids = torch.randint(1, 20, (3, 9))
    mask = torch.arange(9).unsqueeze(0) < torch.tensor([[9], [5], [2]])
    assert check_reversal(rnn, ids, mask, embedding=torch.nn.Embedding(20, 6), exact=True).exact
    assert check_reversal(rnn, ids, mask, embedding=torch.nn.Embedding(20, 6)).exact


def make_trainer(tmp_path, model, **cfg):
    corpus = toy_corpus(pairs=12)
    batches = [collate(corpus.src[i:i + 4], corpus.tgt[i:i + 4], corpus.indices[i:i + 4])
               for i in range(0, 12, 4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model=model, optimizer=optimizer,
                   schedule=LearningRateSchedule(optimizer, lr=0.1, schedule_type="constant"),
                   train_cfg=train_cfg(**cfg), run_dir=tmp_path,
                   stats=TrainingStats(tmp_path, progress=False, echo=False, tensorboard=False),
                   epoch_batches=lambda epoch: batches, validate=lambda m: {"loss": 1, "bleu": 0},
                   static_payload={"config": {}, "tokenizer": torch.zeros(1, dtype=torch.uint8),
                                   "vocab_sizes": {"src": 1, "tgt": 1}})


def test_training_stops_at_the_step_whose_check_fails(tmp_path):
    model = ReversibleToyModel()
    checks = []

    def corrupt_at_step_2(buffer):
        checks.append(len(checks) + 1)
        if len(checks) == 2:
            buffer.head[0, 0] ^= 1

    model.tamper = corrupt_at_step_2
    trainer = make_trainer(tmp_path, model, verify_reversal_every=1, max_steps=3)
    with pytest.raises(TrainingStopped, match=r"reversal drift at training step 2 \(rank 0\): "
                                              r"decoder layer \d at time step \d+: .*largest difference"):
        trainer.train()
    assert checks == [1, 2]


def test_check_runs_every_n_steps_and_needs_a_reversible_model(tmp_path):
    model = ReversibleToyModel()
    seen = []
    model.tamper = lambda buffer: seen.append(True)
    make_trainer(tmp_path / "a", model, verify_reversal_every=2, max_steps=5).train()
    assert len(seen) == 2  # steps 2 and 4

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

    from nmt.errors import ConfigError
    with pytest.raises(ConfigError, match="train.verify_reversal_every"):
        make_trainer(tmp_path / "b", Plain(), verify_reversal_every=1)


# --- the reversible Seq2Seq of the config (revgru encoder and decoder, one shared buffer) ------------

def reversible_seq2seq():
    from nmt.config import config_from_dict
    from nmt.models.build import build_model
    from training.toy import toy_config

    values = toy_config("/nonexistent")  # only the model section is used
    values["model"].update(embedding_dim=16, tie_embeddings=False)
    values["model"]["encoder"].update(cell="revgru", hidden=16, layers=2, dropout=0.0)
    values["model"]["decoder"].update(cell="revgru", hidden=16, layers=1, dropout=0.0)
    values["model"]["attention"].update(context="emb+slice", size=4)
    torch.manual_seed(0)
    return build_model(config_from_dict(values).model, 24, 24)


def seq2seq_batch():
    corpus = toy_corpus(pairs=6, seed=4)
    return collate(corpus.src, corpus.tgt, corpus.indices)


def test_seq2seq_check_passes_and_catches_a_bit_in_either_part(tmp_path, monkeypatch):
    from nmt.reversal_drift import reversal_check_for, verify_seq2seq

    model, batch = reversible_seq2seq(), seq2seq_batch()
    with torch.no_grad():
        assert reversal_check_for(model)(batch) is None

        def flip_head(buffer):
            buffer.head[2, 1] ^= 1

        found = verify_seq2seq(model, batch, corrupt=flip_head)  # the decoder is reversed first
        assert found is not None and found.startswith("decoder layer 0 at time step ")

        def flip_first_word(buffer):  # pushed by the encoder: only its reversal pops it
            buffer.words()[0] ^= 1 << 5

        found = verify_seq2seq(model, batch, corrupt=flip_first_word)
        assert found is not None and found.startswith("encoder layer ")
        assert "largest difference" in found


# --- one corrupted word in a real chunked training step: both checks report it ---------------------

def _corrupt_after_forward(monkeypatch, *, tag: str, word: int, when=lambda plan: True):
    """Flip one bit of pushed word `word` once the run tagged `tag` has done its steps. Training
    (backprop.py) and the drift check (checks.record_run) both run ReversibleRNN.run_steps."""
    original = ReversibleRNN.run_steps

    def run_steps(self, plan, state, values, **options):
        yield from original(self, plan, state, values, **options)
        if plan.tag == tag and when(plan):
            plan.buffer.words()[word] ^= 1 << 5

    monkeypatch.setattr(ReversibleRNN, "run_steps", run_steps)


def chunked_seq2seq():
    model = reversible_seq2seq()
    model.encoder.rnn.chunk_steps = model.decoder.rnn.chunk_steps = 3  # several chunks a side
    return model


@pytest.mark.parametrize("word,part", [(0, "encoder"), (-1, "decoder")])
def test_a_corrupted_word_stops_the_training_steps_backward(monkeypatch, word, part):
    from nmt.reversible import ReversalError
    from nmt.reversible.readout import PendingValueError

    model, batch = chunked_seq2seq(), seq2seq_batch()
    assert batch.src.shape[1] > 3 and batch.tgt_in.shape[1] > 3
    output = model.training_loss(batch, label_smoothing=0.1)
    output.loss.backward()  # clean: the end-of-backward check passes
    assert output.nll.isfinite() and output.loss_value() > 0
    _corrupt_after_forward(monkeypatch, tag="decoder", word=word)  # word 0: the encoder's first
    output = model.training_loss(batch, label_smoothing=0.1)
    with pytest.raises(PendingValueError, match="call backward"):
        output.loss_value()
    with pytest.raises(ReversalError, match=rf"reversing {part} .*(step \d+|layer \d)"):
        output.loss.backward()


@pytest.mark.parametrize("word,part", [(0, "encoder"), (-1, "decoder")])
def test_verify_reversal_every_reports_a_corrupted_word(tmp_path, monkeypatch, word, part):
    from nmt.reversal_drift import reversal_check_for

    model, batch = chunked_seq2seq(), seq2seq_batch()
    _corrupt_after_forward(monkeypatch, tag="decoder", word=word,
                           when=lambda plan: plan.readout is None)  # the check's run only
    with torch.no_grad():
        found = reversal_check_for(model)(batch)
    assert found is not None and found.startswith(f"{part} layer ") and "time step" in found
    trainer = make_trainer(tmp_path, model, verify_reversal_every=1, max_steps=2)
    with pytest.raises(TrainingStopped, match=rf"reversal drift at training step 1 \(rank 0\): "
                                              rf"{part} layer \d at time step \d+"):
        trainer.train()
