"""A tiny frame-tagging task for the CALD engine tests: random padded sequences with per-frame class targets,
a 'transformer' teacher (softmax attention mixer) and a 'linear' student (causal cumulative-mean mixer) of the
same depth and width, both returning ModelOutputs. Runs on CPU in milliseconds per step; no download."""

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter

from cald_brain.brain import CALDBrain
from cald_brain.mixers.masking import lengths_to_mask
from cald_brain.models.outputs import ModelOutputs

N_IN, WIDTH, N_OUT = 6, 16, 5
torch.set_num_threads(
    1
)  # tiny ops: intra-op threads only add contention (many times slower on a busy machine)


class AttentionMixer(torch.nn.Module):
    """Single-head softmax self-attention over the valid frames (the 'transformer' token mixer)."""

    def __init__(self, width: int):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(width, width) for _ in range(3))
        self.out = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return self.out(scores.softmax(dim=-1) @ self.v(x))


class CumulativeMixer(torch.nn.Module):
    """Gated running mean over past frames (a linear-time stand-in for the student's mixer)."""

    def __init__(self, width: int):
        super().__init__()
        self.in_proj = torch.nn.Linear(width, 2 * width)
        self.out = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        value, gate = self.in_proj(x).chunk(2, dim=-1)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
        return self.out(value.cumsum(dim=1) / steps * torch.sigmoid(gate))


class Block(torch.nn.Module):
    def __init__(self, width: int, mixer: str):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.mixer = AttentionMixer(width) if mixer == "attention" else CumulativeMixer(width)
        self.ffn = torch.nn.Sequential(
            torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), mask)
        return x + self.ffn(self.norm2(x))


class ToyNet(torch.nn.Module):
    """Embedding (hidden state 0), `depth` blocks (hidden states 1..depth), per-frame classifier head."""

    def __init__(self, mixer: str = "attention", depth: int = 3, width: int = WIDTH):
        super().__init__()
        self.embed = torch.nn.Linear(N_IN, width)
        self.blocks = torch.nn.ModuleList(Block(width, mixer) for _ in range(depth))
        self.head = torch.nn.Linear(width, N_OUT)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> ModelOutputs:
        mask = lengths_to_mask(lengths, x.shape[1])
        hidden = [self.embed(x) * mask[..., None]]
        for block in self.blocks:
            hidden.append(block(hidden[-1], mask) * mask[..., None])
        return ModelOutputs(logits=self.head(hidden[-1]), hidden_states=tuple(hidden), mask=mask)


def make_dataset(n_items: int = 24, max_len: int = 10, seed: int = 0) -> DynamicItemDataset:
    """Random sequences of 4..max_len frames; a frame's target depends on its and its neighbours' inputs."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(3 * N_IN, N_OUT, generator=gen)
    data = {}
    for i in range(n_items):
        length = int(torch.randint(4, max_len + 1, (1,), generator=gen))
        x = torch.randn(length, N_IN, generator=gen)
        context = torch.cat([F.pad(x, (0, 0, 1, 0))[:-1], x, F.pad(x, (0, 0, 0, 1))[1:]], dim=-1)
        data[f"utt{i}"] = {"x": x, "y": (context @ weights).argmax(dim=-1)}
    dataset = DynamicItemDataset(data)
    dataset.set_output_keys(["id", "x", "y"])
    return dataset


class ToyBrain(CALDBrain):
    """The recipe side: forward_model, task_loss (masked per-frame cross-entropy), a frame error rate metric,
    and SpeechBrain-style checkpoints at VALID keyed by that error rate (`ERR`)."""

    def forward_model(self, model, batch, stage) -> ModelOutputs:
        x, rel_lengths = batch.x
        lengths = torch.round(rel_lengths * x.shape[1]).long()
        return model(x, lengths)

    def task_loss(self, outputs, batch, stage) -> torch.Tensor:
        per_frame = F.cross_entropy(outputs.logits.transpose(1, 2), batch.y.data, reduction="none")
        return per_frame[outputs.mask].mean()

    def update_metrics(self, outputs, batch, stage) -> None:
        wrong = (outputs.logits.argmax(dim=-1) != batch.y.data)[outputs.mask]
        self.errors += int(wrong.sum())
        self.frames += wrong.numel()

    def on_stage_start(self, stage, epoch=None) -> None:
        self.errors, self.frames = 0, 0

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
        stats = self.stage_stats(stage, stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        stats["ERR"] = self.errors / self.frames
        self.last_stats = stats
        if stage == sb.Stage.VALID:
            self.checkpointer.save_and_keep_only(meta={"ERR": stats["ERR"]}, min_keys=["ERR"], num_to_keep=5)


def toy_hparams(save_folder, **overrides) -> dict:
    """hparams as a recipe YAML gives them (top-level keys), with a fresh epoch counter and checkpointer."""
    epochs = overrides.pop("epochs", 2)
    counter = EpochCounter(epochs)
    hparams = {
        "opt_class": lambda params: torch.optim.Adam(params, lr=3e-3),
        "epoch_counter": counter,
        "checkpointer": Checkpointer(save_folder, recoverables={"counter": counter}),
    }
    hparams.update(overrides)
    return hparams


def make_brain(save_folder, student=None, brain_class=ToyBrain, run_opts=None, seed: int = 0, **overrides):
    """A Brain on the toy task; student and (unless given) networks are built from `seed`."""
    torch.manual_seed(seed)
    student = student if student is not None else ToyNet("cumulative")
    hparams = toy_hparams(save_folder, **overrides)
    opts = {"device": "cpu", "noprogressbar": True}
    opts.update(run_opts or {})
    return brain_class(
        modules={"student": student}, hparams=hparams, run_opts=opts, checkpointer=hparams["checkpointer"]
    )


def fit(brain: CALDBrain, dataset=None, batch_size: int = 4, shuffle: bool = True, valid=None) -> None:
    dataset = dataset if dataset is not None else make_dataset()
    brain.fit(
        brain.hparams.epoch_counter,
        dataset,
        valid,
        train_loader_kwargs={"batch_size": batch_size, "shuffle": shuffle},
        valid_loader_kwargs={"batch_size": batch_size},
    )


def ddp_trajectory_run(folder: str) -> None:
    """Entry point for `torchrun --nproc_per_node=2 tests/toy_task.py FOLDER` (gloo, CPU): a
    trajectory run with gradient accumulation and snapshots; each rank saves its student and teacher to
    FOLDER/rank<R>.pt."""
    run_opts = {
        "device": "cpu",
        "noprogressbar": True,
        "distributed_backend": "gloo",
        "grad_accumulation_factor": 2,
    }
    sb.utils.distributed.ddp_init_group(run_opts)
    torch.manual_seed(1)
    teacher = ToyNet("attention")
    brain = make_brain(
        f"{folder}/save",
        run_opts=run_opts,
        guidance_mode="trajectory",
        teacher_net=teacher,
        teacher_opt_class=lambda params: torch.optim.Adam(params, lr=1e-3),
        teacher_update_cycle=2,
        snapshot_every_steps=2,
    )
    fit(brain, batch_size=2)
    rank = torch.distributed.get_rank()
    torch.save(
        {
            "student": brain.student.state_dict(),
            "teacher": teacher.state_dict(),
            "steps": brain.optimizer_step,
        },
        f"{folder}/rank{rank}.pt",
    )


if __name__ == "__main__":
    import sys

    ddp_trajectory_run(sys.argv[1])
