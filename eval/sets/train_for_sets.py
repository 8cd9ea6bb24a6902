"""Two small sets of issue 22's own, which no test trains on (pass them by import reference):

    python eval/objective_experiment.py --toyset eval.sets.train_for_sets:key_values,eval.sets.train_for_sets:agree_6

- `key_values` (6 tokens): three distinct keys of four, each followed by its value ("k2 v2 k4 v4 k1 v1"):
  the keys are coupled (all different, as a shuffle), each value is fixed by its key. 24 answers, uniform.
- `agree_6` (6 tokens): "DET ADJ NOUN VERB DET NOUN" with number agreement of the subject's determiner,
  adjective, noun and verb and of the object's determiner and noun. 256 answers, uniform.

At 2 steps per answer (3 + 3 tokens) no order makes block 1 free of coupled pairs in `key_values` unless
it takes the three keys' values first; `agree_6`'s block 1 holds two positions of one number group under
any order (pigeonhole), as agreement's does.
"""

import itertools

from jointobj.toysets.user_sets import make_toyset

KEYS = {"ka": "va", "kb": "vb", "kc": "vc", "kd": "vd"}
SUBJECT = {"sg": (["this", "that"], ["old", "new"], ["cat", "dog"], ["sees", "likes"]),
           "pl": (["these", "those"], ["big", "small"], ["cats", "dogs"], ["see", "like"])}
OBJECT = {"sg": (["a", "one"], ["bird", "fish"]), "pl": (["some", "many"], ["birds", "fishes"])}


def _key_values():
    answers = [" ".join(f"{k} {KEYS[k]}" for k in keys) for keys in itertools.permutations(KEYS, 3)]
    return make_toyset("key_values", {a: 1 / len(answers) for a in answers})


def _agree_6():
    answers = []
    for subject, obj in itertools.product(SUBJECT, OBJECT):
        for words in itertools.product(*SUBJECT[subject], *OBJECT[obj]):
            answers.append(" ".join(words))
    return make_toyset("agree_6", {a: 1 / len(answers) for a in answers})


key_values = _key_values()
agree_6 = _agree_6()
