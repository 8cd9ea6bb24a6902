"""The embedded default's base dLLM: a tiny bidirectional transformer pretrained with the per-token loss.

    python -m jointobj.training.embedded --base_dir runs/base --dataset likes_tennis,cities,shuffle_3,agreement

It stands in for "an existing dLLM" so the recipes run with nothing downloaded. It is its own
single-process job (a process holds one DeepSpeed accelerator, and the fine-tune needs it),
started by `ensure_base` on global rank 0 while the other ranks (of every node) wait for it.

Nothing here deletes what it did not write, and nothing is reused for the wrong data:

- the base is written to `BASE_DIR.staging` and renamed into place, so a crash never leaves a
  half-written base; a `.staging` left by a crashed build is the only thing removed;
- a non-empty `base_dir` that holds no jointobj base is refused, not emptied;
- builds take a file lock (`BASE_DIR.lock`), so separate jobs sharing the filesystem build
  the base once;
- `embedded.json` in the base records the toy sets it was pretrained on; a run whose toy sets
  are not all among them is refused (pass another `--base_dir`) instead of reusing it.

On several nodes, `base_dir` must be on a filesystem they share (global rank 0 builds it);
otherwise build it once with the command above and copy it to each node.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from accelerate import PartialState
from filelock import FileLock

from jointobj.model.conventions import CONFIG_NAME
from jointobj.model.denoiser import Denoiser
from jointobj.model.tiny import tiny_masked_lm
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.combined import combined_tokenizer
from jointobj.training.data import load_training_data
from jointobj.training.trainer import JointObjConfig, JointObjTrainer
from jointobj.utils.errors import UserError
from jointobj.utils.ranks import configure_cpu_ranks
from jointobj.utils.registry import split_names

BASE_SIZE = "small"  # jointobj.model.tiny.TINY_SIZES preset of the base (hidden size, layers)
RECORD_NAME = "embedded.json"  # in the base directory: the toy sets (and settings) it was pretrained on

# Variables that would make the base job join the launcher's process group or DeepSpeed setup.
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR",
                       "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE", "GROUP_RANK", "ROLE_RANK")


def toy_suite_length(dataset: str) -> int:
    """Longest sequence among the named toy sets; a clear error if the dataset is not toy sets."""
    names = split_names(dataset)
    try:
        return max(load_toyset(name).length for name in names)
    except ValueError as error:
        if not (Path(dataset).exists() or dataset.endswith((".json", ".jsonl"))):
            raise  # a set name or reference with a mistake: its own message says what is wrong
        raise UserError(
            f"the embedded base is pretrained on toy sets, but the dataset is {dataset!r} ({error}); "
            "pass --model_name_or_path DIR to fine-tune your own model on your own data"
        ) from error


def base_is_ready(base_dir: str | Path) -> bool:
    return (Path(base_dir) / CONFIG_NAME).exists()


def check_base_dir(base_dir: str | Path, dataset: str) -> bool:
    """True when `base_dir` holds a base pretrained on every toy set of `dataset`; False when it is
    missing or empty (to be built). Anything else is a ValueError that says what to do."""
    base_dir = Path(base_dir)
    wanted = split_names(dataset)
    if base_is_ready(base_dir):
        record_path = base_dir / RECORD_NAME
        if not record_path.exists():
            raise ValueError(
                f"{base_dir} holds a jointobj model but no {RECORD_NAME}, so the toy sets it was pretrained on are "
                f"unknown (an older jointobj built it, or it is not an embedded base). Pass another --base_dir (a new "
                f"one is pretrained there on {dataset}), or delete {base_dir} yourself to rebuild it."
            )
        pretrained_on = json.loads(record_path.read_text())["toysets"]
        missing = [name for name in wanted if name not in pretrained_on]
        if missing:
            raise ValueError(
                f"the base in {base_dir} was pretrained on {','.join(pretrained_on)}, not on {','.join(missing)}; "
                f"pass another --base_dir (e.g. {base_dir}-{'-'.join(wanted)}, pretrained on this run's sets on "
                f"first use), or delete {base_dir} yourself to rebuild it for {dataset}"
            )
        return True
    if base_dir.exists() and (not base_dir.is_dir() or any(base_dir.iterdir())):
        raise ValueError(
            f"base_dir {base_dir} is not empty but holds no jointobj base (no {CONFIG_NAME}); jointobj does not "
            "delete it. Pass a new or empty --base_dir, or move that directory away yourself."
        )
    return False


def ensure_base(base_dir: str | Path, dataset: str, *, steps: int, learning_rate: float, samples_per_toyset: int,
                seed: int) -> Path:
    """Reuse the base in `base_dir` if it was pretrained on `dataset`'s toy sets, or pretrain it
    there (global rank 0) while the other ranks wait (accelerate's main_process_first: a barrier
    under the launcher's process group, nothing without one)."""
    base_dir = Path(base_dir)
    toy_suite_length(dataset)  # refuse non-toy data here, not inside the subprocess
    state = PartialState()
    with state.main_process_first():  # global rank 0 first; the others then find its base
        if check_base_dir(base_dir, dataset):
            return base_dir
        if not state.is_main_process:
            raise FileNotFoundError(
                f"global rank 0 built the base in {base_dir}, but this rank does not see it: on several nodes "
                "base_dir must be on a shared filesystem, or build it once with "
                "`python -m jointobj.training.embedded` and copy it to each node."
            )
        environment = {k: v for k, v in os.environ.items()
                       if k not in _LAUNCHER_VARIABLES and not k.startswith("ACCELERATE_")}
        command = [sys.executable, "-m", "jointobj.training.embedded", "--base_dir", str(base_dir),
                   "--dataset", dataset, "--steps", str(steps), "--learning_rate", str(learning_rate),
                   "--samples_per_toyset", str(samples_per_toyset), "--seed", str(seed)]
        print(f"pretraining the embedded base dLLM into {base_dir} (reused on later runs)", flush=True)
        subprocess.run(command, env=environment, check=True)
        check_base_dir(base_dir, dataset)  # a base another job built meanwhile must fit this run's sets too
    return base_dir


def pretrain_base(base_dir: Path, dataset: str, steps: int, learning_rate: float, samples_per_toyset: int,
                  seed: int, size: str = BASE_SIZE) -> None:
    """Pretrain a tiny ModernBERT on toy sets with TokenCELoss, full parameters, and save it with
    its record (embedded.json), under a file lock; a base already there for these sets is kept."""
    base_dir = Path(base_dir)
    base_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{base_dir}.lock"):  # one build at a time, across jobs sharing this filesystem
        if check_base_dir(base_dir, dataset):
            print(f"{base_dir} already holds a base pretrained on {dataset}; kept", flush=True)
            return
        staging = Path(f"{base_dir}.staging")
        if staging.exists():  # we hold the lock, so this is left by a build that crashed
            shutil.rmtree(staging)
        _train_into(staging, dataset, steps, learning_rate, samples_per_toyset, seed, size)
        if base_dir.exists():
            base_dir.rmdir()  # empty (check_base_dir refused anything else); rmdir never deletes content
        os.replace(staging, base_dir)


def _train_into(staging: Path, dataset: str, steps: int, learning_rate: float, samples_per_toyset: int,
                seed: int, size: str) -> None:
    configure_cpu_ranks()
    length = toy_suite_length(dataset)
    tokenizer = combined_tokenizer([load_toyset(name) for name in split_names(dataset)])  # user sets: one vocabulary
    model = tiny_masked_lm("modernbert", vocab_size=len(tokenizer), size=size, max_positions=max(32, length),
                           seed=seed)
    denoiser = Denoiser(model, tokenizer=tokenizer)
    config = JointObjConfig(
        output_dir=str(staging), objective="token_ce", max_steps=steps, learning_rate=learning_rate,
        per_device_train_batch_size=128, lr_scheduler_type="linear", warmup_steps=max(1, steps // 20),
        save_strategy="no", logging_steps=max(1, steps // 5), report_to="none", seed=seed,
    )
    data = load_training_data(dataset, tokenizer, samples_per_toyset, seed=seed, max_length=denoiser.max_positions)
    trainer = JointObjTrainer(denoiser, config, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    staging.mkdir(parents=True, exist_ok=True)
    record = {"toysets": split_names(dataset), "samples_per_toyset": samples_per_toyset, "steps": steps,
              "learning_rate": learning_rate, "seed": seed, "size": size, "max_positions": denoiser.max_positions}
    (staging / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    denoiser.save_pretrained(staging)  # jointobj.json last: marks the save complete


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_dir", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--samples_per_toyset", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default=BASE_SIZE, help="a tiny size preset (jointobj.model.tiny.TINY_SIZES)")
    args = parser.parse_args(argv)
    pretrain_base(Path(args.base_dir), args.dataset, args.steps, args.learning_rate, args.samples_per_toyset, args.seed,
                  args.size)


if __name__ == "__main__":
    main()
