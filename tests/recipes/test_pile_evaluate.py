"""lm/Pile/evaluate.py, the lm-evaluation-harness adapter (lm-eval is in the test stack: requirements-dev.txt)
on local tasks defined here (a multiple-choice task scored by log-likelihoods, as the reference's zero-shot
tasks, and a generation task), the harness's results for a converted tiny-Pythia student and for the teacher
equal an independent computation; the command writes the models x tasks table; a task whose data must come
from the hub fails offline with its name; the perplexity column and the missing-package error. Every harness
run is offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) and indexes only the local task folder."""

import builtins
import json

import pytest
import torch
from conftest import SAMPLES, load_repo_script
from transformers import AutoModelForCausalLM, AutoTokenizer

from cald_brain.data.mmap_tokens import MMapTokens
from cald_brain.export import export_student
from cald_brain.models import CausalLM
from cald_brain.models.generation import generate

TINY_PYTHIA = SAMPLES / "models" / "tiny-pythia"
DOCS = [
    ("Return a new list containing all items from the iterable in ascending", ["order.", "banana."], 0),
    ("Open the file and return a corresponding file", ["elephant.", "object."], 1),
    ("Raise a ValueError if the argument is not a valid", ["value.", "sky."], 0),
    ("If the optional argument is omitted, the default", ["under", "is"], 1),
    ("The function returns None if the key is not", ["found.", "purple."], 0),
    ("This method is called when the object is garbage", ["window", "collected."], 1),
]
MAX_GEN_TOKS = 6
evaluate = load_repo_script("lm/Pile/evaluate.py", "pile_evaluate")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No hub access, a fresh datasets cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))


def write_task(folder, name: str, output_type: str, body: str) -> str:
    """A zero-shot task in lm-eval's YAML format over the local JSON-lines file of DOCS."""
    data = folder / "tiny_docs.jsonl"
    data.write_text(
        "".join(json.dumps({"context": c, "choices": ch, "label": y}) + "\n" for c, ch, y in DOCS)
    )
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"test_split: test\noutput_type: {output_type}\n" + body
    )
    return name


def choice_task(folder) -> str:
    """Multiple choice: the choice with the highest log-likelihood after the context (metric acc)."""
    body = 'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
    return write_task(folder, "cald_tiny_choice", "multiple_choice", body + "metric_list:\n  - metric: acc\n")


def generation_task(folder) -> str:
    """Greedy generation of up to MAX_GEN_TOKS tokens, cut at the first ".", scored by exact match."""
    body = (
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{choices[label]}}"\n'
        f'generation_kwargs:\n  until: ["."]\n  max_gen_toks: {MAX_GEN_TOKS}\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    return write_task(folder, "cald_tiny_generate", "generate_until", body)


@torch.no_grad()
def choice_logliks(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    """Sum of log p(continuation tokens | context), continuation = " " + choice, from one forward pass."""
    ctx = tokenizer(context)["input_ids"]
    out = []
    for choice in choices:
        whole = tokenizer(context + " " + choice)["input_ids"]
        logp = model(input_ids=torch.tensor([whole])).logits[0].float().log_softmax(-1)
        out.append(sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
    return out


def student(tmp_path):
    """A converted tiny Pythia exported as train.py exports its best student."""
    torch.manual_seed(0)
    net = CausalLM(str(TINY_PYTHIA), "mamba", {"d_inner": 96, "dt_rank": 4})
    return export_student(net, tmp_path / "student", tokenizer=AutoTokenizer.from_pretrained(TINY_PYTHIA))


def test_harness_scores_student_and_teacher_like_a_forward_pass(tmp_path, offline):
    choice, generation = choice_task(tmp_path), generation_task(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(TINY_PYTHIA)
    manager = evaluate.task_manager([choice, generation], str(tmp_path))
    assert sorted(manager.all_tasks) == [choice, generation]  # the harness's own task files not indexed
    for source in (student(tmp_path), TINY_PYTHIA):
        model, _ = evaluate.load_lm(str(source), "cpu")
        model.generate = None  # Hugging Face's generate must not be used: the harness decodes via ours
        out = evaluate.evaluate_model(model, tokenizer, [choice, generation], batch_size=4, manager=manager)
        samples = sorted(out["samples"][choice], key=lambda s: s["doc_id"])
        assert len(samples) == len(DOCS)
        correct = 0
        for sample, (context, choices, label) in zip(samples, DOCS, strict=True):
            harness = [float(r[0]) for r in sample["filtered_resps"]]
            expected = choice_logliks(model, tokenizer, context, choices)
            assert harness == pytest.approx(expected, abs=1e-3)
            correct += int(max(range(len(choices)), key=expected.__getitem__) == label)
        assert out["results"][choice]["acc,none"] == pytest.approx(correct / len(DOCS))
        # generation: batches of 4 unequal prompts, left-padded by the harness; each as the prompt alone
        for sample in out["samples"][generation]:
            context = DOCS[sample["doc_id"]][0]
            ids = torch.tensor([tokenizer(context)["input_ids"]])
            alone = generate(model, ids, MAX_GEN_TOKS, eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1] :]
            text = tokenizer.decode(alone).split(".")[0].split(tokenizer.eos_token)[0]
            assert sample["resps"] == [[text]]


def test_command_writes_the_table(tmp_path, offline):
    task = choice_task(tmp_path)
    folder = student(tmp_path)
    output = tmp_path / "table.md"
    table = evaluate.main(
        [f"--model={folder}", f"--model={TINY_PYTHIA}", f"--tasks={task}", f"--include_path={tmp_path}"]
        + ["--device=cpu", f"--output={output}"]
    )
    assert output.read_text() == table
    rows = table.splitlines()
    assert rows[0] == f"| model | {task} | mean |"
    assert rows[2].startswith(f"| {folder} (student) |") and rows[3].startswith(
        f"| {TINY_PYTHIA} (transformer) |"
    )
    assert json.loads(output.with_suffix(".json").read_text()).keys() == {
        f"{folder} (student)",
        f"{TINY_PYTHIA} (transformer)",
    }
    manager = evaluate.task_manager([task], str(tmp_path))
    with pytest.raises(SystemExit, match="unknown lm-eval task.*no_such_task"):
        evaluate.load_tasks(manager, [task, "no_such_task"])


def test_task_needing_a_download_fails_offline_with_its_name(tmp_path, offline):
    """A task whose dataset is on the hub (ARC-Easy, one of the reference's tasks, loaded as the harness's
    own YAML loads it)."""
    body = (
        "dataset_name: ARC-Easy\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices.text}}"\ndoc_to_target: 0\n'
        "metric_list:\n  - metric: acc\n"
    )
    task = write_task(tmp_path, "cald_hub_arc", "multiple_choice", body)
    yaml = tmp_path / f"{task}.yaml"
    yaml.write_text(yaml.read_text().replace("dataset_path: json", "dataset_path: allenai/ai2_arc"))
    with pytest.raises(
        SystemExit, match=f"lm-eval task {task}: its dataset could not be loaded.*network access"
    ):
        evaluate.main(
            [f"--model={TINY_PYTHIA}", f"--tasks={task}", f"--include_path={tmp_path}", "--device=cpu"]
        )


@pytest.mark.slow  # indexing the harness's own task files takes ~25 s
def test_reference_tasks_fail_offline_with_their_names(offline):
    tasks = evaluate.REFERENCE_TASKS.split(",")
    manager = evaluate.task_manager(tasks, None)
    for task in tasks:
        with pytest.raises(SystemExit, match=f"lm-eval task {task}: its dataset could not be loaded"):
            evaluate.load_tasks(manager, [task])


def test_results_table():
    table = evaluate.results_table({"a": {"x": 0.5, "y": 0.25}, "b": {"x": 1.0, "y": 0.0}}, ["x", "y"])
    assert table.splitlines() == [
        "| model | x | y | mean |",
        "|---|---|---|---|",
        "| a | 50.0 | 25.0 | 37.5 |",
        "| b | 100.0 | 0.0 | 50.0 |",
    ]


def test_missing_lm_eval_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name.startswith("lm_eval"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    with pytest.raises(SystemExit, match=r'pip install -e "\.\[lm\]"'):
        evaluate.main([f"--model={TINY_PYTHIA}", "--tasks=piqa"])


def test_perplexity_column_without_the_harness(tmp_path):
    data = ["--data_prefix=" + str(SAMPLES / "pile_mini" / "document"), "--data_start=56", "--seq_length=129"]
    output = tmp_path / "ppl.md"
    table = evaluate.main(
        [f"--model={TINY_PYTHIA}", "--tasks=", *data, "--batch_size=3", f"--output={output}"]
    )
    rows = table.splitlines()
    assert rows[0] == "| model | perplexity |"
    corpus = MMapTokens(SAMPLES / "pile_mini" / "document")
    ids = torch.stack([torch.from_numpy(corpus[i].astype("int64")) for i in range(56, 64)])
    teacher = AutoModelForCausalLM.from_pretrained(TINY_PYTHIA).eval()
    with torch.no_grad():
        logits = teacher(input_ids=ids[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).exp().item()
    assert float(rows[2].split("|")[2]) == pytest.approx(expected, abs=0.01)  # batches of 3, 3, 2 = one of 8
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        evaluate.main([f"--model={TINY_PYTHIA}", "--tasks="])


PPL_DATA = ["--data_prefix=" + str(SAMPLES / "pile_mini" / "document"), "--data_start=56", "--seq_length=129"]


def test_every_model_is_checked_before_the_first_is_evaluated(tmp_path, monkeypatch):
    def not_now(*args):
        raise AssertionError("evaluated before every --model was checked")

    monkeypatch.setattr(evaluate, "perplexity", not_now)
    typo = tmp_path / "results" / "studnet"
    (tmp_path / "results").mkdir()
    for missing in (str(typo), "results/studnet"):  # a path, and a relative one that could be a hub name
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit, match=f"--model={missing}: model folder '{missing}' does not exist"):
            evaluate.main([f"--model={TINY_PYTHIA}", f"--model={missing}", "--tasks=", *PPL_DATA])


def test_each_model_is_written_as_soon_as_it_is_evaluated(tmp_path, monkeypatch):
    done = []

    def second_fails(model, *args):
        if done:
            raise RuntimeError("CUDA out of memory")
        done.append(model)
        return 12.5

    monkeypatch.setattr(evaluate, "perplexity", second_fails)
    output = tmp_path / "ppl.md"
    argv = [f"--model={TINY_PYTHIA}", f"--model={TINY_PYTHIA}/", "--tasks=", *PPL_DATA, f"--output={output}"]
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate.main(argv)
    assert output.read_text().splitlines()[2] == f"| {TINY_PYTHIA} (transformer) | 12.50 |"
    assert json.loads(output.with_suffix(".json").read_text()) == {
        f"{TINY_PYTHIA} (transformer)": {"perplexity": 12.5}
    }
