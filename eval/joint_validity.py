"""Joint validity, fidelity and cost of parallel decoders on the marginal-trap toy sets.

A thin wrapper over `jointobj eval` (jointobj/cli/eval.py, where the options are documented):

    python eval/joint_validity.py --oracle --toyset likes_tennis,cities --decoder random,l2r \
        --tokens-per-step 1,2,all --samples 2000 --seed 0 --json out/validity.json
"""

import os
import sys

from jointobj.cli.eval import main

if __name__ == "__main__":
    if "--no-progress" in sys.argv:  # progress (samples done, rate) shows on a terminal unless this is given
        sys.argv.remove("--no-progress")
        os.environ["TQDM_DISABLE"] = "1"
    main(sys.argv[1:])
