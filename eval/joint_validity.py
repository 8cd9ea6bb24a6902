r"""Joint validity, fidelity and cost of parallel decoders on the marginal-trap toy sets.

A thin wrapper over `jointobj eval` (jointobj/cli/eval.py, where the options are documented):

    python eval/joint_validity.py --oracle --toyset likes_tennis,cities --decoder random,l2r \
        --tokens-per-step 1,2,all --samples 2000 --seed 0 --json out/validity.json
"""

import sys

from jointobj.cli.eval import main

if __name__ == "__main__":
    main(sys.argv[1:])  # --no-progress among them hides the progress bars
