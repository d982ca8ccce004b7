"""The VisPlotBench judge: a vision model scores a rendered image 0-100, against the reference image
("vis") and against the task text ("task"). Optional: `run_eval.py --judge MODEL --judge-base-url URL`.

    from vc2.eval import api, judge
    j = judge.Judge(api.ChatClient(base_url, "gpt-4.1", api_key=key, cache_path="out/judge_cache.jsonl"))
    j.vis("generated.png", "reference.png")   # {"score": 85, "status": "scored", "detail": ""}
    j.task("generated.png", task)             # "status": "scored" | "unparsed" | "error" (score None)

The protocol of the original harness: images as base64 PNG data URLs, the generated image first and
the reference second, temperature 0, the score parsed as the whole reply being an integer, else the
last `[FINAL SCORE]: N`. Aggregates (report.py) as the original: mean, median, share >= 75 ("good"),
share <= 25 ("bad"), per language and round.
Where we differ on purpose:
- a call that fails after its retries (an InfraFailure), or a reply with no parsable score, is
  *unscored*: recorded with its status and counted in the report, never 0 (the original filled them
  with 0, and its "unparsed" count was then always 0);
- the system prompt is a neutral judge prompt, not the plotting system prompt the original sent;
- the instruction texts below are our own wording of the same rules (a 0-100 scale where the
  reference is 100, colours not to be matched, the reply format), so absolute scores can differ
  somewhat from the original's; compare models under the same judge and prompts.
Answers are cached by the client (model, messages with the images' bytes, parameters), so --resume
never pays for a judgement twice.
"""
import base64
import re
from pathlib import Path

from vc2.eval.api import InfraFailure

SYSTEM = "You are an impartial expert who evaluates rendered charts, diagrams and figures. Answer as instructed."

VIS_INSTRUCTION = (
    "You are shown two figures. The second figure is the ground truth, which has a score of 100. Rate "
    "how closely the first figure reproduces the second on a scale from 0 to 100: compare the kind of "
    "plot, the data shown, the layout, the text (titles, labels, legends) and the overall appearance. Do "
    "not take colours into account. A blank or almost blank first figure scores 0. Think it through "
    "briefly, then end your reply with a line of the form [FINAL SCORE]: N, where N is an integer from 0 to 100.")

TASK_INSTRUCTION = (
    "You are shown a figure and the task it was made for. Rate how well the figure fulfils the task on a "
    "scale from 0 to 100: the requested kind of plot, the data, the labels and the requested style. A "
    "blank or almost blank figure scores 0. Think it through briefly, then end your reply with a line of "
    "the form [FINAL SCORE]: N, where N is an integer from 0 to 100.")

_SCORE = re.compile(r".*\[FINAL SCORE\]:? ?(\d+)", re.DOTALL)  # greedy: the last one wins


def parse_score(text):
    """The original's rule: the whole reply as an integer, else the last `[FINAL SCORE]: N`; None if
    neither, or if the number is outside 0..100."""
    text = (text or "").strip()
    try:
        n = int(text)
    except ValueError:
        m = _SCORE.match(text)
        n = int(m.group(1)) if m else None
    return n if n is not None and 0 <= n <= 100 else None


def data_url(path):
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _image(path):
    return {"type": "image_url", "image_url": {"url": data_url(path), "detail": "auto"}}


class Judge:
    def __init__(self, client, max_tokens=3000):
        self.client, self.max_tokens = client, max_tokens
        self.name = client.model

    def _ask(self, content):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
        answer = self.client.complete(messages, temperature=0.0, max_tokens=self.max_tokens)
        if isinstance(answer, InfraFailure):
            return {"score": None, "status": "error", "detail": answer.message}
        score = parse_score(answer["text"])
        if score is None:
            return {"score": None, "status": "unparsed", "detail": answer["text"][-300:]}
        return {"score": score, "status": "scored", "detail": ""}

    def vis(self, image, reference):
        """The generated image against the reference image."""
        return self._ask([{"type": "text", "text": VIS_INSTRUCTION}, _image(image), _image(reference)])

    def task(self, image, task):
        """The generated image against the task's description and style."""
        text = f"{TASK_INSTRUCTION}\n[PLOT TASK]:\n{task.description}\n{task.style}"
        return self._ask([{"type": "text", "text": text}, _image(image)])
