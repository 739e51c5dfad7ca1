"""TED-LIUM output units (cald_brain.tasks.ctc): characters and SentencePiece BPE pieces encode and
decode transcripts, the BPE model is trained once into the save folder and reused, the head size is checked,
and a transcript character the units do not know stops training naming the utterance; the training batches
come from the YAML's train_sampler."""

import csv

import pytest

import cald_brain.tasks.ctc as train
from cald_brain.brain import train_loader_kwargs

CHARACTERS = "abcdefghijklmnopqrstuvwxyz' "
TRANSCRIPTS = ["the cat sat on the mat", "a dog's dinner", "the mat was flat", "what a cat"] * 5


def hparams(save_folder, units: str, num_outputs: int) -> dict:
    return {
        "save_folder": str(save_folder),
        "units": units,
        "characters": CHARACTERS,
        "blank_index": 0,
        "num_outputs": num_outputs,
    }


def write_train_csv(folder, transcripts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "duration", "wrd"])
        writer.writerows([f"utt{i}", 1.0, text] for i, text in enumerate(transcripts))


def test_characters_round_trip_and_unknown_character_names_the_utterance(tmp_path):
    units = train.build_units(hparams(tmp_path, "char", 29))
    ids = units.encode("utt1", "a dog's dinner")
    assert 0 not in ids and units.decode(ids) == "a dog's dinner"
    with pytest.raises(ValueError, match=r"utterance talk-0001: character\(s\) \['é'\]"):
        units.encode("talk-0001", "café")
    with pytest.raises(SystemExit, match="num_outputs is 30 but the character set has 29"):
        train.build_units(hparams(tmp_path, "char", 30))


def test_bpe_trained_on_the_train_split_saved_and_reused(tmp_path):
    write_train_csv(tmp_path, TRANSCRIPTS)
    units = train.build_units(hparams(tmp_path, "bpe", 40))
    model = tmp_path / "tokenizer" / "40_bpe.model"
    assert model.exists()
    ids = units.encode("utt1", "the cat sat on the mat")
    assert 0 not in ids and len(ids) < len("the cat sat on the mat")  # pieces, not characters
    assert units.decode(ids) == "the cat sat on the mat"
    # 'z' is in no train transcript but in `characters`: it still has a piece, so dev/test can use it.
    assert 0 not in units.encode("dev1", "zoo")
    with pytest.raises(ValueError, match=r"utterance dev2: character\(s\) \['é'\]"):
        units.encode("dev2", "café")
    stamp = model.stat().st_mtime_ns
    write_train_csv(tmp_path, ["something else entirely"] * 20)  # a resumed run does not retrain
    again = train.build_units(hparams(tmp_path, "bpe", 40))
    assert model.stat().st_mtime_ns == stamp and again.encode("utt1", "the cat") == units.encode(
        "u", "the cat"
    )
    with pytest.raises(SystemExit, match="units must be one of char, bpe"):
        train.build_units(hparams(tmp_path, "words", 40))


def test_train_loader_takes_its_batches_from_the_sampler():
    opts = {"train_dataloader_opts": {"num_workers": 0}, "train_sampler": lambda data: ("sampler of", data)}
    assert train_loader_kwargs(opts, "train set") == {
        "num_workers": 0,
        "batch_sampler": ("sampler of", "train set"),
    }
    opts["train_dataloader_opts"] = {"batch_size": 2, "shuffle": True}
    with pytest.raises(SystemExit, match="train_dataloader_opts sets batch_size, shuffle, but the training"):
        train_loader_kwargs(opts, "train set")
