"""The evaluation and development sets shipped with rlaif (see README.md here; rebuilt by scripts/build_data.py).

`DATA_DIR` is the default of `RLAIF_DATA_DIR`: the named sets of `eval.extra_sets` and the human-labelled pairs
resolve here unless the server points elsewhere.
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
