"""Build the mini text corpora committed under ``tests/samples/``: GLUE task folders (SST-2, QNLI, QQP) and
an ``aclImdb`` tree.

Real GLUE and IMDB cannot ship with the repository, so tests and the README demo runs use miniature copies
that keep the distributed on-disk layout and its quirks: GLUE's tab-separated files with their real headers
(no quoting, so quote characters appear raw inside fields), a malformed QQP row (too few fields, as the
real dump has) and unlabelled ``test.tsv`` files; IMDB's ``{train,test}/{pos,neg}/<id>_<rating>.txt``
reviews on one line with ``<br /><br />`` breaks, plus ``train/unsup/`` and the top-level extras.

The text is made from small hand-written templates (sentiment phrases, questions and answers about made-up
people and places), so it is disjoint from the Python documentation the tiny RoBERTa was pretrained on
(``tiny_roberta.py``), and learnable by a tiny model in a few CPU minutes. Everything is seeded:
the same command gives byte-identical files.

Usage::

    python tools/samples/text_corpora.py --out tests/samples
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

SUBJECTS = (
    "the film", "this movie", "the story", "the acting", "the script", "the soundtrack", "the ending",
    "the director 's new work", "the cast", "this picture", "the plot", "the dialogue", "the sequel",
)  # fmt: skip
POSITIVE = (
    "wonderful", "moving", "brilliant", "charming", "delightful", "gripping", "funny", "beautiful",
    "superb", "clever", "touching", "smart", "fresh", "warm", "excellent",
)  # fmt: skip
NEGATIVE = (
    "dull", "boring", "awful", "clumsy", "tedious", "bland", "messy", "lifeless", "silly", "painful",
    "predictable", "flat", "weak", "terrible", "pointless",
)  # fmt: skip
INTENSIFIERS = ("", "", "really ", "truly ", "quite ", "very ", "utterly ")
CONNECTIVES = (
    "and {s2}", ", and {s2}", "; {s2}", "-- {s2}", ", while {s2}",
)  # fmt: skip
NAMES = (
    "Ada", "Boris", "Carmen", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira",
    "Luca", "Mina", "Nils", "Oona", "Pavel", "Rosa", "Sven", "Tara", "Viktor",
)  # fmt: skip
PLACES = (
    "Lisbon", "Oslo", "Quito", "Hanoi", "Dakar", "Perth", "Riga", "Lima", "Tunis", "Porto", "Kyoto",
    "Accra", "Bergen", "Cusco",
)  # fmt: skip
THINGS = (
    "violin", "chess", "tea", "bicycles", "poetry", "painting", "sailing", "gardening", "jazz", "pottery",
    "astronomy", "cooking",
)  # fmt: skip
YEARS = tuple(range(1901, 1999, 7))
QUESTION_FORMS = (
    ("Where was {name} born?", "{name} was born in {place} in {year}.", "place"),
    ("When was {name} born?", "Records show that {name} was born in {year}.", "year"),
    ("What does {name} love?", "Friends say {name} has always loved {thing}.", "thing"),
    ("Which city did {name} move to?", "In {year}, {name} moved to {place}.", "place"),
)
PARAPHRASES = (
    ("How do I learn {thing} quickly?", "What is the fastest way to learn {thing}?"),
    ("Is {place} a good city to live in?", "Would you recommend living in {place}?"),
    ("What is the best way to start {thing}?", "How should a beginner start {thing}?"),
    ("Why is {thing} so popular in {place}?", "What makes {thing} popular in {place}?"),
    ("How expensive is {place} for students?", "Is {place} an affordable city for students?"),
)


def sentiment_sentence(rng: random.Random, positive: bool) -> str:
    """One SST-2-style sentence (lower-case, tokenised, trailing space) of the given polarity: most state
    it directly, some negate the opposite adjective ("is not dull"), some add a clause of the same sign."""
    words = POSITIVE if positive else NEGATIVE
    opposite = NEGATIVE if positive else POSITIVE
    subject = rng.choice(SUBJECTS)
    if rng.random() < 0.2:
        clause = f"{subject} is not {rng.choice(opposite)}"
    else:
        clause = f"{subject} is {rng.choice(INTENSIFIERS)}{rng.choice(words)}"
    if rng.random() < 0.4:
        second = f"{rng.choice(SUBJECTS)} feels {rng.choice(words)}"
        clause += " " + rng.choice(CONNECTIVES).format(s2=second).lstrip()
    return clause.replace(" ,", ",").replace(",", " ,") + " "


def person(rng: random.Random) -> dict[str, str]:
    return {
        "name": rng.choice(NAMES),
        "place": rng.choice(PLACES),
        "year": str(rng.choice(YEARS)),
        "thing": rng.choice(THINGS),
    }


def qnli_pair(rng: random.Random, entailed: bool) -> tuple[str, str]:
    """A question and a sentence that answers it (entailment) or talks about the wrong person or fact."""
    question, answer, _ = rng.choice(QUESTION_FORMS)
    facts = person(rng)
    if entailed:
        return question.format(**facts), answer.format(**facts)
    other = dict(facts)
    other["name"] = rng.choice([n for n in NAMES if n != facts["name"]])
    if rng.random() < 0.5:
        _, answer, _ = rng.choice([f for f in QUESTION_FORMS if f[1] != answer])
        other = facts
    return question.format(**facts), answer.format(**other)


def qqp_pair(rng: random.Random, duplicate: bool) -> tuple[str, str]:
    """Two questions: a paraphrase of the same question, or questions on another topic or place."""
    first, second = rng.choice(PARAPHRASES)
    facts = person(rng)
    if duplicate:
        return first.format(**facts), second.format(**facts)
    if rng.random() < 0.5:
        other = dict(facts, thing=rng.choice([t for t in THINGS if t != facts["thing"]]))
        other["place"] = rng.choice([p for p in PLACES if p != facts["place"]])
        return first.format(**facts), second.format(**other)
    _, second = rng.choice([p for p in PARAPHRASES if p[0] != first])
    return first.format(**facts), second.format(**facts)


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Tab-separated, no quoting (as GLUE is distributed), Unix newlines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def balanced_labels(rng: random.Random, count: int) -> list[bool]:
    labels = [i % 2 == 0 for i in range(count)]
    rng.shuffle(labels)
    return labels


def make_sst2(out: Path, rng: random.Random, sizes: dict[str, int]) -> None:
    for split in ("train", "dev"):
        rows = []
        for label in balanced_labels(rng, sizes[split]):
            rows.append([sentiment_sentence(rng, label), str(int(label))])
        write_tsv(out / f"{split}.tsv", ["sentence", "label"], rows)
    test = [[str(i), sentiment_sentence(rng, rng.random() < 0.5)] for i in range(sizes["test"])]
    write_tsv(out / "test.tsv", ["index", "sentence"], test)


def make_qnli(out: Path, rng: random.Random, sizes: dict[str, int]) -> None:
    header = ["index", "question", "sentence", "label"]
    for split in ("train", "dev"):
        rows = []
        for i, label in enumerate(balanced_labels(rng, sizes[split])):
            question, sentence = qnli_pair(rng, label)
            rows.append([str(i), question, sentence, "entailment" if label else "not_entailment"])
        write_tsv(out / f"{split}.tsv", header, rows)
    test = [[str(i), *qnli_pair(rng, rng.random() < 0.5)] for i in range(sizes["test"])]
    write_tsv(out / "test.tsv", ["index", "question", "sentence"], test)


def make_qqp(out: Path, rng: random.Random, sizes: dict[str, int]) -> None:
    """QQP with raw double quotes inside a question and, in train, one malformed row: a question with an
    embedded newline splits the record into two short lines (as in the real dump)."""
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    qid = 0
    for split in ("train", "dev"):
        rows = []
        for i, label in enumerate(balanced_labels(rng, sizes[split])):
            first, second = qqp_pair(rng, label)
            if i == 3:
                first = first.replace("?", ' "really"?')
            rows.append([str(i), str(qid + 1), str(qid + 2), first, second, str(int(label))])
            qid += 2
        if split == "train":
            broken = rows[5]
            rows[5:6] = [broken[:4] + ["What is the meaning of"], ['life?"', broken[5]]]
        write_tsv(out / f"{split}.tsv", header, rows)
    test = [[str(i), *qqp_pair(rng, rng.random() < 0.5)] for i in range(sizes["test"])]
    write_tsv(out / "test.tsv", ["id", "question1", "question2"], test)


def review(rng: random.Random, positive: bool) -> str:
    """One IMDB-style review: a few sentiment sentences on one line, paragraphs joined by <br /><br />."""
    paragraphs = []
    for _ in range(rng.randint(2, 3)):
        sentences = [sentiment_sentence(rng, positive).strip() for _ in range(rng.randint(2, 3))]
        paragraphs.append(" ".join(s[0].upper() + s[1:].replace(" ,", ",") + "." for s in sentences))
    return "<br /><br />".join(paragraphs)


def make_imdb(out: Path, rng: random.Random, per_class: dict[str, int]) -> None:
    """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt (neg ratings 1-4, pos 7-10), train/unsup/ with
    rating-0 files, the top-level README and imdb.vocab (placeholders)."""
    for split, count in per_class.items():
        for label in ("pos", "neg"):
            folder = out / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rating = rng.randint(7, 10) if label == "pos" else rng.randint(1, 4)
                text = review(rng, label == "pos")
                (folder / f"{i}_{rating}.txt").write_text(text, encoding="utf-8")
    unsup = out / "train" / "unsup"
    unsup.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (unsup / f"{i}_0.txt").write_text(review(rng, rng.random() < 0.5), encoding="utf-8")
    (out / "README").write_text(
        "Mini aclImdb sample made by tools/samples/text_corpora.py.\n", encoding="utf-8"
    )
    vocab = sorted({w.strip(".,;-").lower() for w in " ".join(POSITIVE + NEGATIVE + SUBJECTS).split()})
    (out / "imdb.vocab").write_text("\n".join(v for v in vocab if v) + "\n", encoding="utf-8")


GLUE_SIZES = {"train": 400, "dev": 100, "test": 20}
IMDB_PER_CLASS = {"train": 120, "test": 50}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("tests/samples"), help="samples folder")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    glue = args.out / "glue_data"
    imdb = args.out / "aclImdb"
    for folder in (glue, imdb):
        if folder.exists():
            shutil.rmtree(folder)
    make_sst2(glue / "SST-2", random.Random(args.seed), GLUE_SIZES)
    make_qnli(glue / "QNLI", random.Random(args.seed + 1), GLUE_SIZES)
    make_qqp(glue / "QQP", random.Random(args.seed + 2), GLUE_SIZES)
    make_imdb(imdb, random.Random(args.seed + 3), IMDB_PER_CLASS)
    print(f"wrote {glue} and {imdb}")


if __name__ == "__main__":
    main()
