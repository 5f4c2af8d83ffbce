"""Data pipeline: data files, robust text reading, sentencepiece tokenization, batching.

    files = check_data_files(cfg, ["train", "valid"])            # {split: (src path, tgt path)}
    tokenizer = train_tokenizer(cfg.data, run_dir / "spm")      # or Tokenizer.load / from_bytes
    train = load_split(cfg, "train", tokenizer)                  # EncodedCorpus, length-filtered
    for batch in TrainingBatches(train, batch_tokens=cfg.data.batch_tokens, seed=cfg.train.seed): ...
    valid = load_split(cfg, "valid", tokenizer)
    for batch in make_eval_batches(valid.src, valid.tgt, batch_size=cfg.data.eval_batch_size): ...
"""
from nmt.data.batching import (Batch, EpochBatches, TokenBatchSampler, TrainingBatches, collate,
                               collate_pairs, make_eval_batches, restore_order, truncate)
from nmt.data.corpus import (EncodedCorpus, LineCleaner, encode_parallel, iter_clean_lines,
                             load_split, read_lines, read_parallel)
from nmt.data.files import check_data_files, data_file
from nmt.data.tokenizer import (BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_sentencepiece,
                                train_tokenizer)

__all__ = [
    "Batch", "EpochBatches", "TokenBatchSampler", "TrainingBatches", "collate", "collate_pairs",
    "make_eval_batches", "check_data_files", "data_file",
    "restore_order", "truncate", "EncodedCorpus", "LineCleaner", "encode_parallel",
    "iter_clean_lines", "load_split", "read_lines", "read_parallel", "BOS_ID", "EOS_ID", "PAD_ID",
    "UNK_ID", "Tokenizer", "train_sentencepiece", "train_tokenizer",
]
