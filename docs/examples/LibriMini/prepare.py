"""Prepare a LibriSpeech-style corpus as TED-LIUM's manifests (docs/ADAPTING.md, ways (b) and (c)).

Layout read: ``<data_folder>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac`` with one
``<speaker>-<chapter>.trans.txt`` per chapter (``<utterance id> TRANSCRIPT`` lines), for the splits
train-clean-100, dev-clean and test-clean. Written: ``<save_folder>/{train,dev,test}.csv`` with TED-LIUM's
columns ``ID, duration, wav, start, stop, spk_id, wrd`` (``wav`` under ``$data_root``, empty start/stop: the
whole file, lowercase transcripts), which recipes/TEDLIUM/train.py and cald_brain.tasks.ctc read.

    python prepare.py --data_folder /path/LibriSpeech --save_folder results/libri/save
"""

import argparse
from pathlib import Path

from cald_brain.data.audio import audio_info
from cald_brain.data.manifests import write_csv_atomic

SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
COLUMNS = ("ID", "duration", "wav", "start", "stop", "spk_id", "wrd")


def prepare_librispeech(data_folder: str | Path, save_folder: str | Path, skip_prep: bool = False) -> None:
    """Write the three manifests (module docstring); `skip_prep`: do nothing (manifests made elsewhere)."""
    if skip_prep:
        return
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    for split, folder in SPLITS.items():
        rows = []
        for transcripts in sorted((data_folder / folder).glob("*/*/*.trans.txt")):
            for line in transcripts.read_text(encoding="utf-8").splitlines():
                utt_id, words = line.split(" ", 1)
                audio = transcripts.parent / f"{utt_id}.flac"
                rows.append(
                    {
                        "ID": utt_id,
                        "duration": f"{audio_info(audio).duration:.3f}",
                        "wav": f"$data_root/{audio.relative_to(data_folder).as_posix()}",
                        "start": "",
                        "stop": "",
                        "spk_id": utt_id.split("-")[0],
                        "wrd": words.lower(),
                    }
                )
        if not rows:
            raise ValueError(
                f"no {data_folder / folder}/*/*/*.trans.txt: is data_folder a LibriSpeech folder?"
            )
        write_csv_atomic(save_folder / f"{split}.csv", COLUMNS, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--save_folder", required=True)
    args = parser.parse_args()
    prepare_librispeech(args.data_folder, args.save_folder)
