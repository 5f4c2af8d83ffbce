"""Trains ReversibleToyModel through Trainer; run plainly (one process) or under torchrun.

    python ddp_toy_train.py RUN_DIR MAX_STEPS [--resume] [--nan-on-rank R] [--batch-tokens N]
        [--accumulate N]
Rank 0 writes RUN_DIR/params.pt (the final parameters) and the usual checkpoints.
--nan-on-rank R: the second batch's loss is NaN on rank R only (every rank must skip it).
--batch-tokens N: the global token budget (default 64; 4 gives batches of one sentence).
--accumulate N: batches per update (train.accumulate)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from revtoy import ReversibleToyModel, toy_corpus, train_cfg  # noqa: E402

from nmt import distributed  # noqa: E402
from nmt.data.batching import EpochBatches, TokenBatchSampler  # noqa: E402
from nmt.optim import LearningRateSchedule  # noqa: E402
from nmt.run import find_resume_checkpoint  # noqa: E402
from nmt.stats import TrainingStats  # noqa: E402
from nmt.training import Trainer  # noqa: E402


def main(run_dir: str, max_steps: int, resume: bool, nan_rank=None, batch_tokens=64,
         accumulate=1) -> None:
    torch.set_num_threads(1)
    placement, device = distributed.initialize(torch.device("cpu"))
    torch.manual_seed(0)
    model = ReversibleToyModel()
    if nan_rank == placement.rank:
        poison_second_batch(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    schedule = LearningRateSchedule(optimizer, lr=0.2, schedule_type="constant")
    corpus = toy_corpus()
    sampler = TokenBatchSampler([len(s) for s in corpus.src], [len(t) for t in corpus.tgt],
                                batch_tokens=batch_tokens, seed=1)
    stats = (TrainingStats(run_dir, log_every=1, progress=False, echo=False, tensorboard=False)
             if placement.is_main else distributed.SilentStats())
    trainer = Trainer(model=model, optimizer=optimizer, schedule=schedule,
                      train_cfg=train_cfg(max_steps=max_steps, accumulate=accumulate), run_dir=run_dir, stats=stats,
                      epoch_batches=lambda epoch: EpochBatches(
                          corpus, sampler.batches_for_epoch(epoch - 1), placement),
                      validate=lambda m: {"loss": 1.0, "bleu": 0.0},
                      static_payload={"config": {}, "tokenizer": torch.zeros(1, dtype=torch.uint8),
                                      "vocab_sizes": {"src": 24, "tgt": 24}},
                      placement=placement)
    payload = find_resume_checkpoint(Path(run_dir), resume, placement)
    if payload is not None:
        trainer.restore(payload)
    trainer.train()
    if placement.is_main:
        torch.save(model.state_dict(), Path(run_dir) / "params.pt")
    distributed.barrier(placement)  # as `nmt train` does: no rank tears gloo down before the others
    distributed.shutdown()


def poison_second_batch(model) -> None:
    real, calls = model.training_loss, []

    def training_loss(batch, **kwargs):
        calls.append(1)
        output = real(batch, **kwargs)
        if len(calls) == 2:
            output.loss = output.loss * float("nan")
        return output

    model.training_loss = model.forward = training_loss


if __name__ == "__main__":
    options = sys.argv[3:]
    nan_rank = int(options[options.index("--nan-on-rank") + 1]) if "--nan-on-rank" in options else None
    tokens = int(options[options.index("--batch-tokens") + 1]) if "--batch-tokens" in options else 64
    accumulate = int(options[options.index("--accumulate") + 1]) if "--accumulate" in options else 1
    main(sys.argv[1], int(sys.argv[2]), "--resume" in options, nan_rank, tokens, accumulate)
