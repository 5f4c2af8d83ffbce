"""torchrun with 2 CPU processes (gloo) trains exactly like one process on the same global batches."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt import checkpoint as ckpt
from nmt.distributed import Distributed, from_environment, shard_of
from nmt.errors import UserError
from nmt.stats import read_metrics
from training.toy import toy_config, write_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOLERANCE = 1e-6


def launch(arguments, *, processes: int):
    """`python -m nmt ...` style arguments, under torchrun when processes > 1; returns stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    prefix = [sys.executable]
    if processes > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    done = subprocess.run(prefix + arguments, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def largest_difference(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return max(float((first[k].double() - second[k].double()).abs().max()) for k in first)


def step_parameters(run_dir, step: int) -> dict:
    return ckpt.load_checkpoint(ckpt.step_checkpoint_path(run_dir, step))["model"]


# --- the GRU baseline through `nmt train` ----------------------------------------------------------

@pytest.fixture(scope="module")
def gru_runs(tmp_path_factory):
    """One process for 4 steps; 2 processes for 3 steps, then --resume to step 4."""
    root = tmp_path_factory.mktemp("ddp")
    base = toy_config(root, optimizer="sgd", lr=0.2, max_steps=4, valid_every=3, keep_last=5,
                      label_smoothing=0.1, clip_grad_norm=1.0,
                      lr_schedule={"type": "constant", "warmup_steps": 0})
    base["model"]["dropout"] = 0.0
    single, multi = copy.deepcopy(base), copy.deepcopy(base)
    single["run_dir"], multi["run_dir"] = str(root / "single"), str(root / "multi")
    launch(["-m", "nmt", "train", str(write_config(root, single, "single.yaml")), "--no-progress"],
           processes=1)
    multi["train"]["max_steps"] = 3
    launch(["-m", "nmt", "train", str(write_config(root, multi, "multi.yaml")), "--no-progress"],
           processes=2)
    multi_after_3 = {k: v.clone() for k, v in step_parameters(multi["run_dir"], 3).items()}
    multi["train"]["max_steps"] = 4
    resumed_log = launch(["-m", "nmt", "train", str(write_config(root, multi, "multi.yaml")),
                          "--resume", "--no-progress"], processes=2)
    return Path(single["run_dir"]), Path(multi["run_dir"]), multi_after_3, resumed_log


def test_two_processes_equal_one_on_the_same_global_batches(gru_runs):
    single, _, multi_after_3, _ = gru_runs
    reference = step_parameters(single, 3)
    initial_change = largest_difference(reference, step_parameters(single, 4))
    assert initial_change > 1e-3  # the parameters really move from step to step
    assert largest_difference(reference, multi_after_3) < TOLERANCE


def test_a_distributed_run_resumes_where_it_stopped(gru_runs):
    single, multi, _, resumed_log = gru_runs
    assert "resumed from" in resumed_log and "step-00000003.pt" in resumed_log
    assert "x 2 processes" in resumed_log
    assert largest_difference(step_parameters(single, 4), step_parameters(multi, 4)) < TOLERANCE
    # rank 0 alone logs each step once, with the loss summed over both ranks' shares
    logged = [(r["event"], r["step"]) for r in read_metrics(multi) if r["event"] != "summary"]
    assert logged == [("train", 1), ("train", 2), ("train", 3), ("valid", 3), ("train", 4),
                      ("valid", 4)]
    single_losses = [r["loss"] for r in read_metrics(single, "train")]
    multi_losses = [r["loss"] for r in read_metrics(multi, "train")]
    assert multi_losses == pytest.approx(single_losses, rel=1e-6)
    valid_losses = [[r["loss"] for r in read_metrics(run, "valid")] for run in (single, multi)]
    assert valid_losses[1] == pytest.approx(valid_losses[0], rel=1e-6)  # reduced across ranks
    training = ckpt.load_checkpoint(ckpt.step_checkpoint_path(multi, 4))["training"]
    assert len(training["rng_per_rank"]) == 2


# --- the reversible seq2seq model (revgru, shared buffer) through `nmt train` ----------------------

def test_reversible_seq2seq_two_processes_equal_one(tmp_path):
    """RevGRU encoder and decoder with slice storage, drift check on every step on every rank."""
    base = toy_config(tmp_path, optimizer="sgd", lr=0.2, max_steps=3, valid_every=3,
                      label_smoothing=0.1, clip_grad_norm=1.0, verify_reversal_every=1,
                      lr_schedule={"type": "constant", "warmup_steps": 0})
    model = base["model"]
    model.update(dropout=0.0, tie_embeddings=False)
    model["encoder"].update(cell="revgru", dropout=0.0, max_forget_bits=3)
    model["decoder"].update(cell="revgru", dropout=0.0, max_forget_bits=3)
    model["attention"].update(context="emb+slice", size=4)
    runs = {}
    for name, processes in (("single", 1), ("multi", 2)):
        values = copy.deepcopy(base)
        values["run_dir"] = str(tmp_path / name)
        launch(["-m", "nmt", "train", str(write_config(tmp_path, values, f"{name}.yaml")),
                "--no-progress"], processes=processes)
        runs[name] = step_parameters(tmp_path / name, 3)
    assert any(name.startswith("encoder.rnn.cells.") for name in runs["single"])  # reversible
    single_losses = [r["loss"] for r in read_metrics(tmp_path / "single", "train")]
    multi_losses = [r["loss"] for r in read_metrics(tmp_path / "multi", "train")]
    assert len(single_losses) == 3 and single_losses[0] != single_losses[2]  # it trains
    assert multi_losses == pytest.approx(single_losses, rel=1e-6)
    assert largest_difference(runs["single"], runs["multi"]) < TOLERANCE


# --- a ReversibleRNN toy model through Trainer directly -----------------------------------------

def test_a_nan_on_one_rank_is_skipped_by_every_rank(tmp_path):
    """Rank 1 alone sees a NaN loss on the second batch: both ranks skip it (the loss is summed
    over ranks before deciding), exactly like one process skipping that batch."""
    script = str(HERE / "ddp_toy_train.py")
    launch([script, str(tmp_path / "single"), "3", "--nan-on-rank", "0"], processes=1)
    launch([script, str(tmp_path / "multi"), "3", "--nan-on-rank", "1"], processes=2)
    for run in ("single", "multi"):
        log = (tmp_path / run / "train.log").read_text()
        assert "warning: skipped epoch 1 batch 2 (after step 1): loss is nan" in log, run
        assert [r["step"] for r in read_metrics(tmp_path / run, "train")] == [1, 2, 3]
    single = torch.load(tmp_path / "single" / "params.pt", weights_only=True)
    multi = torch.load(tmp_path / "multi" / "params.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in multi.values())
    assert largest_difference(single, multi) < TOLERANCE


def one_and_two_processes(tmp_path, *arguments):
    """ddp_toy_train.py with `arguments` in one process and in two: their final parameters."""
    script = str(HERE / "ddp_toy_train.py")
    launch([script, str(tmp_path / "single"), *arguments], processes=1)
    launch([script, str(tmp_path / "multi"), *arguments], processes=2)
    return tuple(torch.load(tmp_path / run / "params.pt", weights_only=True)
                 for run in ("single", "multi"))


def test_batches_of_one_sentence_give_the_other_rank_a_zero_weight_stand_in(tmp_path):
    """batch_tokens=4: every global batch is one sentence, so rank 1 has nothing of its own; it
    runs a weight-0 stand-in (no hang, no gradient) and the result equals one process."""
    single, multi = one_and_two_processes(tmp_path, "3", "--batch-tokens", "4")
    assert largest_difference(single, multi) < TOLERANCE
    tokens = [r["tokens"] for r in read_metrics(tmp_path / "multi", "train")]
    assert tokens == [r["tokens"] for r in read_metrics(tmp_path / "single", "train")]


def test_accumulated_batches_sync_gradients_once_per_update_and_equal_one_process(tmp_path):
    """train.accumulate 2: the first backward of each update runs under DDP's no_sync, the second
    all-reduces both; the result equals one process accumulating the same global batches."""
    single, multi = one_and_two_processes(tmp_path, "2", "--accumulate", "2")
    assert largest_difference(single, multi) < TOLERANCE
    single_tokens = [r["tokens"] for r in read_metrics(tmp_path / "single", "train")]
    plain = [r["tokens"] for r in read_metrics(tmp_path / "multi", "train")]
    assert single_tokens == plain and len(plain) == 2
    launch([str(HERE / "ddp_toy_train.py"), str(tmp_path / "unaccumulated"), "4"], processes=1)
    per_batch = [r["tokens"] for r in read_metrics(tmp_path / "unaccumulated", "train")]
    assert single_tokens == [per_batch[0] + per_batch[1], per_batch[2] + per_batch[3]]


# --- sharding and the torchrun environment ---------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 7, 8])
def test_shards_partition_every_batch_with_equal_counts_per_rank(size):
    batch = list(range(100, 100 + size))
    shards = [shard_of(batch, Distributed(rank=r, world_size=3)) for r in range(3)]
    real = sorted(i for share, weight in shards if weight == 1.0 for i in share)
    assert real == batch  # every sentence exactly once, on one rank
    assert all(share for share, _ in shards)  # every rank runs a step
    assert all(share == [batch[0]] for share, weight in shards if weight == 0.0)


def test_environment_is_read_and_checked():
    assert from_environment({}).world_size == 1
    placement = from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (placement.rank, placement.world_size, placement.is_main) == (1, 2, False)
    with pytest.raises(UserError, match="RANK=2, WORLD_SIZE=2"):
        from_environment({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="WORLD_SIZE='two'"):
        from_environment({"RANK": "0", "WORLD_SIZE": "two"})
