"""Run a recipe under the deepspeed launcher, then record the trained model's logits on a probe.

    python -m deepspeed.launcher.runner --num_gpus 2 tests/launched_recipe.py --config recipes/configs/logsum.yaml ...

Every rank runs the probe forward (under ZeRO-3 the weights are sharded and the forward is
collective); rank 0 saves input ids and logits to OUTPUT_DIR/probe.pt, so the test can check
that the adapter reloaded in another process reproduces the trained model.
"""

import faulthandler
import signal
import sys
from pathlib import Path

import torch

from jointobj.training.recipe import run_recipe


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints where a hung rank waits
    result = run_recipe(sys.argv[1:])  # the launcher adds --local_rank; --config names the recipe's YAML
    engine = result.trainer.model_wrapped
    engine.eval()
    probe = torch.full((1, 4), result.denoiser.mask_token_id)  # every toy set's answers start from masks
    with torch.no_grad():
        logits = result.denoiser.routed_through(engine)(input_ids=probe.to(result.trainer.args.device))
    if result.trainer.is_world_process_zero():
        torch.save({"input_ids": probe, "logits": logits.cpu()}, Path(result.output_dir) / "probe.pt")


if __name__ == "__main__":
    main()
