"""tools/export.py: a run folder laid out as the recipes leave it (hyperparams.yaml with a relative
output_folder and pretrained_source, save/label_encoder.txt, CKPT+* folders, test_metrics.json) is exported
from another working directory: only the student is built, the best checkpoint by WER is the one exported,
and the folder gives that checkpoint's outputs."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_repo_script, tiny_audio_checkpoint
from speechbrain.dataio.encoder import CTCTextEncoder

from cald_brain.inference import load

export_tool = load_repo_script("tools/export.py", "export_tool")

CHARACTERS = "ab' "
HPARAMS = """\
output_folder: runs/ted/1986
guidance_mode: target
sample_rate: 16000
units: char
student: !new:cald_brain.models.SpeechModel
  encoder: !new:cald_brain.models.SpeechEncoder
    source: models/tiny
    mixer: bimamba2
    mixer_kwargs:
      d_state: 8
      headdim: 16
  num_outputs: 5
teacher_net: !new:this.would.fail.if.built
"""


def write_checkpoint(save, name: str, wer: float, seed: int, student: torch.nn.Module) -> dict:
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) if k.startswith("head.") else v for k, v in student.state_dict().items()}
    folder = save / f"CKPT+{name}"
    folder.mkdir()
    torch.save(state, folder / "student.ckpt")
    (folder / "CKPT.yaml").write_text(f"WER: {wer}\nend-of-epoch: true\nunixtime: {seed}\n")
    (folder / "brain.ckpt").write_text(f"optimizer_step: {seed}\n")
    return state


@pytest.fixture
def run_folder(tmp_path):
    """A run started in tmp_path/start with relative paths, as `cd start; python train.py ...` leaves it."""
    start = tmp_path / "start"
    tiny_audio_checkpoint(start / "models" / "tiny", "base", 0.0)
    run = start / "runs" / "ted" / "1986"
    save = run / "save"
    save.mkdir(parents=True)
    (run / "hyperparams.yaml").write_text(HPARAMS)
    (run / "test_metrics.json").write_text(json.dumps({"WER": 12.5}))
    encoder = CTCTextEncoder()
    encoder.load_or_create(
        path=save / "label_encoder.txt",
        from_iterables=[list(CHARACTERS)],
        special_labels={"blank_label": 0},
        sequence_input=False,
    )
    return run


def test_export_tool_exports_the_best_checkpoint_from_anywhere(run_folder, tmp_path, monkeypatch):
    from cald_brain.models import SpeechEncoder, SpeechModel

    source = str(run_folder.parents[2] / "models" / "tiny")
    student = SpeechModel(
        SpeechEncoder(source, mixer="bimamba2", mixer_kwargs={"d_state": 8, "headdim": 16}), 5
    )
    save = run_folder / "save"
    best = write_checkpoint(save, "2026-01-01+00-00-01+00", 20.0, 1, student)
    write_checkpoint(save, "2026-01-01+00-00-02+00", 35.0, 2, student)  # newer, worse
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    folder = export_tool.export_run(Path(os.path.relpath(run_folder, elsewhere)))
    assert folder.resolve() == run_folder / "student"
    student.load_state_dict(best)
    student.eval()
    wavs = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(
            load(folder).net(wavs, torch.ones(1)).logits, student(wavs, torch.ones(1)).logits
        )
    card = (folder / "README.md").read_text()
    assert "guidance mode: target" in card and "WER: 12.5" in card and "optimizer steps: 1" in card
    vocab = json.loads((folder / "vocab.json").read_text())
    assert vocab["<pad>"] == 0 and set(vocab) == {"<pad>", "a", "b", "'", "|"}


@pytest.mark.slow
def test_export_tool_asks_for_the_source_when_it_cannot_be_found(run_folder, tmp_path, monkeypatch):
    shutil.rmtree(run_folder.parents[2] / "models")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="--pretrained_source"):
        export_tool.main([str(run_folder)])
