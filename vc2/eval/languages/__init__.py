"""The languages vc2 runs: one record per language, one file per record, and the registry of them all.

    from vc2.eval import languages
    lang = languages.get("Vega-Lite")        # the record of "vegalite" (any alias works)
    languages.BENCHMARK                       # VisPlotBench's eight, in its table order (--lang all)
    languages.LANGUAGES                       # all twelve of VisCode-Multi-679K, by name

Every module of this package defines `LANGUAGE = Language(...)`: its names and fence tags, what a
task's `data` field holds, the prompt pieces, how extraction recognises and repairs its code, how it
renders (cold, and warm when given a pool), the tools and packages it needs and the container image
family it runs in. Task loading, prompts, extraction, executors, the warm pool, the CLIs, dataset
validation and the tests all read this registry; nothing else lists languages. Adding a language is
adding a file here (r.py, cpp.py, javascript.py and typescript.py were added that way).

The registry is built when this package is imported. The language modules import the execution helpers
(vc2.eval.executors.common), and vc2.eval.executors reads the registry only when called, so either
package may be imported first.
"""
import importlib
import pkgutil
import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Language:
    name: str                       # canonical name: a task's `language`, the file name, e.g. "vegalite"
    display: str                    # as prompts write it, e.g. "Vega-Lite"
    fence: str                      # the fence tag prompts ask for
    tags: frozenset                 # every fence tag accepted in an answer (lowercase); `fence` is one
    instruction: str                # the prompt's first paragraph; "{fence}" is replaced by `fence`
    looks_complete: Callable        # code -> bool: a whole program, not a snippet or prose (extraction)
    render: Callable                # (code, workdir, mode, timeout_s[, warm=pool]) -> Outcome, see executors
    version: Callable               # () -> "tool 1.2, lib 3.4" for summary.json
    image: str                      # container image family: python / web / tex / lilypond / r / native
    aliases: tuple = ()             # other spellings of the name (config names, file names, `language` fields)
    data: str | None = None         # what a task's `data` holds: "csv" (written as data.csv), "code"
                                    # (definitions pasted into the prompt), None (no data)
    data_access: str = ""           # how the program reads data.csv (data == "csv")
    no_image_hint: str = "Make sure the code draws visible content."  # self-debug, after no/blank image
    repair: Callable = str          # extracted code -> the code that runs (each repair says why)
    draws: str | None = None        # regex: the program makes a picture (dataset validation calls a row
                                    # without it "not visual"); None: every program of the language does
    missing_dependency: str | None = None  # regex on an error: a package the sandbox lacks (group 1: its name)
    timeout_s: float = 60.0         # wall clock per execution
    warm: bool = False              # render() takes warm=WarmPool and uses a warm server (vc2/eval/warm.py)
    tools: tuple = ()               # executables the renderer runs (on PATH, or inside the image)
    modules: tuple = ()             # Python modules the renderer itself needs
    apt: tuple = ()                 # Debian packages (sandbox_images/apt-packages.txt)
    pip: tuple = ()                 # pip packages (sandbox_images/pip-requirements.txt)
    npm: tuple = ()                 # npm packages (sandbox_images/node-tools.txt)
    benchmark: int | None = None    # its column in VisPlotBench's tables (1-8); None: VisCode-Multi only

    def __post_init__(self):
        assert self.fence in self.tags, (self.name, self.fence)
        assert self.data in (None, "csv", "code"), (self.name, self.data)
        assert self.image in ("python", "web", "tex", "lilypond", "r", "native"), (self.name, self.image)


def squash(name):
    """How names are compared: 'Vega-Lite', 'vega_lite' and 'vegalite' are one name."""
    return re.sub(r"[\s_\-.]", "", str(name).lower())


def _discover():
    found = []
    for info in pkgutil.iter_modules(__path__):
        record = importlib.import_module(f"{__name__}.{info.name}").LANGUAGE
        assert record.name == info.name, f"{info.name}.py defines the language {record.name!r}"
        found.append(record)
    found.sort(key=lambda r: (r.benchmark is None, r.benchmark or 0, r.name))  # the benchmark's table order first
    return {r.name: r for r in found}


def _spellings(records):
    out = {}
    for r in records:
        for spelling in (r.name, r.display, *r.aliases):
            assert out.setdefault(squash(spelling), r.name) == r.name, f"{spelling!r} names two languages"
    return out


LANGUAGES: dict = _discover()
BENCHMARK = tuple(name for name, r in LANGUAGES.items() if r.benchmark)
_BY_SPELLING = _spellings(LANGUAGES.values())
assert sorted(LANGUAGES[n].benchmark for n in BENCHMARK) == list(range(1, 9)), BENCHMARK


def canonical(name, default=...):
    """'Vega-Lite' -> 'vegalite', 'asy' -> 'asymptote', 'c++' -> 'cpp'; ValueError (or `default`) if unknown."""
    lang = _BY_SPELLING.get(squash(name))
    if lang is None:
        if default is not ...:
            return default
        raise ValueError(f"unknown language {name!r}; expected one of {', '.join(LANGUAGES)} (or an alias)")
    return lang


def get(name) -> Language:
    """The record of a language, by its name or any alias; ValueError if unknown."""
    return LANGUAGES[canonical(name)]
