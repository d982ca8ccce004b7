"""`python -m vc2.validate DATA... --out KEPT.jsonl`: the same command as `python -m vc2.data.validate`,
whose module (vc2/data/validate.py) holds the code and its documentation; this name is kept because
it is the one the dataset recipe uses."""
import sys

from vc2.data.validate import main

if __name__ == "__main__":
    sys.exit(main())
