import gzip
import io
import random

import pytest
import torch

from nmt.config import TokenizerConfig, config_from_dict
from nmt.data.tokenizer import (BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_sentencepiece,
                                train_tokenizer)
from nmt.errors import ConfigError, UserError

EN_WORDS = "a the dog cat man woman runs jumps over red blue small house street and with".split()
DE_WORDS = "ein der hund katze mann frau läuft springt über rot blau klein haus straße und mit".split()
# none of these characters occur in the training data
UNSEEN = ["the cat 🙂 runs", "日本語 dog", "Ωmega ∑ straße", "zebra quokka XYZ 42"]


def sentences(words, count, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(count)]


def write_corpus(directory, *, gz=False):
    for lang, words in (("en", EN_WORDS), ("de", DE_WORDS)):
        text = "".join(line + "\n" for line in sentences(words, 400, seed=len(lang) + ord(lang[0])))
        if gz:
            with gzip.open(directory / f"train.{lang}.gz", "wt", encoding="utf-8") as handle:
                handle.write(text)
        else:
            (directory / f"train.{lang}").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("joint")
    write_corpus(directory, gz=True)
    config = config_from_dict({"data": {"dir": str(directory), "tokenizer": {"vocab_size": 320}}})
    return train_tokenizer(config.data, directory / "spm")


@pytest.fixture(scope="module")
def per_side(tmp_path_factory):
    directory = tmp_path_factory.mktemp("per_side")
    write_corpus(directory)
    config = config_from_dict({"data": {"dir": str(directory),
                                        "tokenizer": {"vocab_size": 300, "joint": False,
                                                      "model_type": "bpe"}}})
    return train_tokenizer(config.data, directory / "spm")


def test_special_ids_are_fixed(joint, per_side):
    for processor in (joint.src, per_side.src, per_side.tgt):
        pieces = [processor.id_to_piece(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)]
        assert pieces == ["<pad>", "<unk>", "<s>", "</s>"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)


@pytest.mark.parametrize("text", UNSEEN + ["the dog runs over the red house", "der hund läuft"])
def test_round_trip_with_byte_fallback(joint, per_side, text):
    for tokenizer in (joint, per_side):
        src_ids, tgt_ids = tokenizer.encode_src(text), tokenizer.encode_tgt(text)
        assert UNK_ID not in src_ids and UNK_ID not in tgt_ids
        assert not {PAD_ID, BOS_ID, EOS_ID} & set(src_ids + tgt_ids)
        assert tokenizer.decode_tgt(tgt_ids) == text


def test_unseen_characters_use_byte_pieces(joint):
    pieces = joint.src_pieces("🙂")
    assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]  # UTF-8 of U+1F642


def test_without_byte_fallback_unseen_characters_are_unknown():
    lines = sentences(EN_WORDS, 300, seed=3)
    tokenizer = Tokenizer(train_sentencepiece(lines, TokenizerConfig(vocab_size=60, byte_fallback=False)))
    assert UNK_ID in tokenizer.encode_src("the 🙂 cat")


def test_joint_and_per_side_vocabularies(joint, per_side):
    assert joint.joint and joint.src is joint.tgt
    assert joint.src_vocab_size == joint.tgt_vocab_size <= 320
    assert not per_side.joint and per_side.src is not per_side.tgt
    assert per_side.src_vocab_size == per_side.tgt_vocab_size == 300  # bpe fills its vocabulary
    # the target model learned German words; the source model never saw them
    assert len(per_side.tgt_pieces("straße")) < len(per_side.src_pieces("straße"))


def test_decode_stops_at_eos_and_skips_specials(joint):
    ids = joint.encode_tgt("der hund")
    assert joint.decode_tgt([BOS_ID] + ids + [EOS_ID] + joint.encode_tgt("katze") + [PAD_ID]) == "der hund"
    assert joint.decode_tgt(torch.tensor(ids + [EOS_ID, PAD_ID, PAD_ID])) == "der hund"
    assert joint.decode_tgt([]) == ""


def test_bytes_round_trip_survives_weights_only_checkpoint(joint, per_side):
    for tokenizer in (joint, per_side):
        buffer = io.BytesIO()
        torch.save({"tokenizer": tokenizer.to_bytes()}, buffer)
        buffer.seek(0)
        restored = Tokenizer.from_bytes(torch.load(buffer, weights_only=True)["tokenizer"])
        assert restored.joint == tokenizer.joint
        for text in UNSEEN:
            assert restored.encode_src(text) == tokenizer.encode_src(text)
            assert restored.encode_tgt(text) == tokenizer.encode_tgt(text)


def test_save_and_load_directory(joint, per_side, tmp_path):
    for name, tokenizer in (("a", joint), ("b", per_side)):
        tokenizer.save(tmp_path / name)
        loaded = Tokenizer.load(tmp_path / name)
        assert loaded.to_bytes() == tokenizer.to_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["joint.model", "joint.vocab"]
    per_side.save(tmp_path / "a")  # switching kind leaves no stale model behind
    assert not (tmp_path / "a" / "joint.model").exists()
    assert not Tokenizer.load(tmp_path / "a").joint


def test_batch_encoding_matches_single(joint):
    lines = UNSEEN + [""]
    assert joint.encode_src_lines(lines) == [joint.encode_src(line) for line in lines]
    assert joint.encode_tgt_lines([]) == []


def test_bad_inputs_are_user_errors(tmp_path, joint):
    with pytest.raises(UserError, match="no sentencepiece model"):
        Tokenizer.load(tmp_path)
    with pytest.raises(UserError, match="corrupted"):
        Tokenizer.from_bytes(b"something else")
    with pytest.raises(UserError, match="corrupted"):
        Tokenizer.from_bytes(joint.to_bytes()[:-10])
    with pytest.raises(ConfigError, match=r"^data\.tokenizer\.vocab_size: .*smaller than required"):
        train_sentencepiece(sentences(EN_WORDS, 50, seed=1), TokenizerConfig(vocab_size=20))
    with pytest.raises(ConfigError, match=r"^data\.train: .*no non-empty lines"):
        train_sentencepiece(["", " "], TokenizerConfig(vocab_size=300))
    config = config_from_dict({"data": {"dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"^data\.train: neither .*train\.en nor"):
        train_tokenizer(config.data)


def test_input_sentence_size_samples_training_lines():
    """Only sampled lines train the model: 101 of 3000 lines miss most once-only words."""
    rare = [f"rare{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(100)]
    lines = sentences(EN_WORDS, 3000, seed=5)
    for i, word in enumerate(rare):
        lines[i * 30] += " " + word

    def known_rare(input_sentence_size):
        tokenizer = Tokenizer(train_sentencepiece(lines, TokenizerConfig(
            vocab_size=200, model_type="word", byte_fallback=False,
            input_sentence_size=input_sentence_size)))
        return sum(UNK_ID not in tokenizer.encode_src(word) for word in rare)

    assert known_rare(0) == 100
    assert known_rare(101) < 30
