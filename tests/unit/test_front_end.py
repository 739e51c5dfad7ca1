"""cald_brain.models.front_end: the frozen feature encoder computed once for student and teacher gives
exactly the results of computing it twice, and is shared only when input, weights and freezing allow."""

import numpy as np
import pytest
import torch
from conftest import TINY_WAV2VEC2

from cald_brain.models import SpeechEncoder, SpeechModel
from cald_brain.models.front_end import share_front_end
from cald_brain.tasks.ctc import CTCBrain

MIXER = {"d_state": 16, "headdim": 32}


def pair(freeze_student: bool = True) -> tuple[SpeechModel, SpeechModel]:
    torch.manual_seed(0)
    student = SpeechModel(
        SpeechEncoder(str(TINY_WAV2VEC2), "bimamba2", MIXER, freeze_feature_encoder=freeze_student), 7
    )
    teacher = SpeechModel(SpeechEncoder(str(TINY_WAV2VEC2)), 7).requires_grad_(False)
    return student.eval(), teacher.eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 12000, generator=torch.Generator().manual_seed(1)), torch.tensor([1.0, 0.7])


def test_teacher_reuses_the_students_features_and_gets_the_same_outputs():
    student, teacher = pair()
    wavs, lens = batch()
    expected = teacher(wavs, lens)
    keys = set(teacher.state_dict())
    shared = share_front_end(student, teacher)
    student(wavs, lens)
    got = teacher(wavs, lens)
    assert shared.hits == 1
    assert torch.equal(got.logits, expected.logits)
    assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, expected.hidden_states, strict=True))
    assert set(teacher.state_dict()) == keys  # the link leaves the module structure alone
    teacher(torch.randn(2, 12000), lens)  # another input: computed, not reused
    assert shared.hits == 1


def test_other_weights_or_an_unfrozen_encoder_are_not_shared():
    student, teacher = pair()
    wavs, lens = batch()
    with torch.no_grad():
        teacher.frozen_front_end().conv_layers[0].conv.weight[0, 0, 0] += 1.0
    expected = teacher(wavs, lens)
    shared = share_front_end(student, teacher)
    student(wavs, lens)
    assert torch.equal(teacher(wavs, lens).logits, expected.logits)
    assert (shared.hits, shared.offers) == (0, 1)

    student, teacher = pair(freeze_student=False)  # the student's features carry its gradient graph
    shared = share_front_end(student, teacher)
    student.train()(wavs, lens)
    teacher(wavs, lens)
    assert shared.hits == 0


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


@pytest.mark.parametrize("mode", ["target", "trajectory"])
def test_a_guided_training_step_is_unchanged_by_sharing(mode):
    """One CTC training step of the brain, with and without the link: the same loss and updated weights."""
    from speechbrain.dataio.batch import PaddedBatch

    wavs, lens = batch()
    items = [
        {"id": f"u{i}", "sig": wavs[i, : round(lens[i].item() * 12000)], "tokens": torch.tensor([1, 2])}
        for i in range(2)
    ]
    results = []
    for share in (True, False):
        student, teacher = pair()
        if mode == "trajectory":  # trained jointly: everything but the frozen feature encoder
            teacher.requires_grad_(True).encoder.model.freeze_feature_encoder()
        hparams = {
            "opt_class": adamw,
            "blank_index": 0,
            "guidance_mode": mode,
            "alpha_kd": 1.0,
            "teacher_net": teacher.train(),
            "teacher_from_source": mode == "target",
            "teacher_opt_class": adamw if mode == "trajectory" else None,
        }
        run_opts = {"device": "cpu", "noprogressbar": True}
        brain = CTCBrain(units=None, modules={"student": student.train()}, hparams=hparams, run_opts=run_opts)
        brain.on_fit_start()
        if not share:
            brain.front_end.unlink()
        torch.manual_seed(3)
        np.random.seed(3)  # transformers draws SpecAugment's time masks with numpy
        brain.step = 1
        loss = brain.fit_batch(PaddedBatch(items))
        assert brain.front_end.hits == int(share)
        results.append((loss, [p.detach().clone() for p in [*student.parameters(), *teacher.parameters()]]))
    (loss_a, params_a), (loss_b, params_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
