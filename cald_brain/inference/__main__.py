"""Command line of `cald_brain.inference`: one line per input, `input<TAB>result`.

    python -m cald_brain.inference results/TEDLIUM/x/1986/student talk.wav other.flac
    python -m cald_brain.inference results/GLUE/sst2/student "a gripping film" "dull"
    python -m cald_brain.inference results/Pile/x/student "The capital of France is" --max-new-tokens 20

Speech models take audio files (transcript, or label and score; with several heads `head=label<TAB>score`
per head, then the joint label); text classifiers take texts (label and
score); language models take prompts (the continuation, newlines shown as \\n). An input that fails (a
missing or corrupt file) is reported on stderr, naming it, and the exit status is 1.
"""

import argparse
import sys

from . import LanguageModel, SpeechRecognizer, TextClassifier, UtteranceClassifier, load


def result(interface, item: str, max_new_tokens: int) -> str:
    """One input's result as printed."""
    if isinstance(interface, SpeechRecognizer):
        return interface.transcribe_file(item)
    if isinstance(interface, UtteranceClassifier):
        found = interface.classify_file(item)
        if isinstance(found, dict):  # several heads: head=label<TAB>score per head, then the joint one
            return "\t".join(f"{head}={label}\t{score:.4f}" for head, (label, score) in found.items())
        return f"{found[0]}\t{found[1]:.4f}"
    if isinstance(interface, TextClassifier):
        label, score = interface.classify([item])[0]
        return f"{label}\t{score:.4f}"
    assert isinstance(interface, LanguageModel)
    return interface.generate(item, max_new_tokens=max_new_tokens).replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cald_brain.inference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("folder", help="an exported student folder (<output_folder>/student)")
    parser.add_argument("inputs", nargs="+", help="audio files (speech models), texts or prompts")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="language models: tokens to generate")
    args = parser.parse_args(argv)
    try:
        interface = load(args.folder, args.device)
    except (OSError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    status = 0
    for item in args.inputs:
        try:
            print(f"{item}\t{result(interface, item, args.max_new_tokens)}", flush=True)
        except (OSError, RuntimeError, ValueError) as err:
            print(f"ERROR: {item}: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
