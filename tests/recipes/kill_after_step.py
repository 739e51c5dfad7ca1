"""Run a recipe's train.py exactly as its command line would, but SIGKILL the process right after optimizer
step N (checkpoints are written by the real code path; only the death is staged, deterministically):

    python tests/recipes/kill_after_step.py N recipes/TEDLIUM/train.py hparams/x.yaml --key=value ...
"""

import os
import runpy
import signal
import sys

from cald_brain.brain import CALDBrain


def main() -> None:
    kill_at = int(sys.argv[1])
    script = sys.argv[2]
    original = CALDBrain.on_fit_batch_end

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        original(self, batch, outputs, loss, should_step)
        if should_step and self.optimizer_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    CALDBrain.on_fit_batch_end = on_fit_batch_end
    sys.argv = sys.argv[2:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
