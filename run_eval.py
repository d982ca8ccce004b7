"""VisPlotBench-style evaluation: `python run_eval.py --lang svg`.

Not built yet: the evaluation issue (#4) delivers the tasks, the sandboxed renderers and the
self-debug loop. Until then this entry point says what it will do and exits with status 2.
"""
import sys

PLAN = """run_eval.py is not implemented yet (it lands with the evaluation issue). When it is, it will:
  1. load the bundled VisPlotBench-style tasks for the chosen languages (--lang svg|python|...|all),
  2. ask a model (--model DIR, default: the embedded SmolLM2-135M-Instruct) for plotting code,
  3. run each answer with the language's real renderer inside a sandbox, with multi-round self-debug,
  4. write results.jsonl, summary.json and a report (pass rate per language and round).
What works today: the model, checkpoints, tokenizer and sampler (`python -m vc2.chat --model DIR`)."""

if __name__ == "__main__":
    print(PLAN, file=sys.stderr)
    sys.exit(2)
