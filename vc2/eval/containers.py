"""Container images for the executors: one per language family, named from what they are built of.

    python -m vc2.eval.containers                       # each family: its languages, tag, built or not
    python -m vc2.eval.containers tag web               # localhost/vc2-web:0.1.0-<hash>
    python -m vc2.eval.containers context web DIR       # the build context of one family (build.sh uses it)
    bash sandbox_images/build.sh [--engine podman|docker] [--base IMAGE] [FAMILY...]   # builds them

A family's packages are not listed here: they are the union of its language records' `apt`, `pip`
and `npm` fields (vc2/eval/languages/), pinned by sandbox_images/pip-requirements.txt and
node-tools.txt, the lists install_host.sh installs on the host. So one record change reaches the host
install, the image and the drift check at once. The tag carries vc2's version and a hash of the build
inputs (the family's build file and its three package lists), so a changed list gives a new tag and a
stale image is never used: the host looks for the tag it computes, finds none, and says to build it.
The base image (a build argument) is not hashed, so that the same inputs have the same name whatever
Debian 12 they start from; build.sh records it as a label.

The executor drivers are not in the images: sandbox._argv mounts the driver directory and the vendored
JS read-only at their host paths, so there is one copy of them and nothing to drift.
"""
import hashlib
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from vc2.eval import languages

ROOT = Path(__file__).resolve().parents[2] / "sandbox_images"  # the build files (a checkout; see README)
FAMILIES = ("python", "web", "tex", "lilypond", "r", "native")
PREFIX = "localhost/vc2-"
try:
    VERSION = metadata.version("vc2")
except metadata.PackageNotFoundError:  # run from a plain checkout (PYTHONPATH=.)
    VERSION = "0"
# Which Debian package puts each record's tool on PATH: what the drift check holds the build files to
# (tests/eval/test_containers.py also checks this table against dpkg on a host that has the tools).
TOOL_PACKAGES = {
    "rsvg-convert": "librsvg2-bin", "chromium": "chromium", "pdflatex": "texlive-latex-base",
    "xelatex": "texlive-xetex", "pdftoppm": "poppler-utils", "pdfinfo": "poppler-utils", "asy": "asymptote",
    "gs": "ghostscript", "xvfb-run": "xvfb", "lilypond": "lilypond", "Rscript": "r-base-core", "g++": "g++",
    "node": "nodejs",
}
# Which pip distribution provides each Python module a record's renderer imports
MODULE_DISTS = {"matplotlib": "matplotlib", "playwright": "playwright", "vl_convert": "vl-convert-python"}


def _listed(path):
    """Lines of a package list without comments and blanks, first word of each."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            out.append(line.split()[0])
    return out


def _pin(lines, name, sep, path):
    """The pinned line of `name` in a list (pip: name==1.2, npm: name@1.2)."""
    for line in lines:
        if line.rsplit(sep, 1)[0].lower() == name.lower():
            return line
    raise ValueError(f"{path}: no pinned line for {name!r} (a language record asks for it)")


def records(family):
    if family not in FAMILIES:
        raise ValueError(f"unknown image family {family!r}; one of {', '.join(FAMILIES)}")
    return [r for r in languages.LANGUAGES.values() if r.image == family]


def packages(family):
    """{'apt': [...], 'pip': [pinned...], 'npm': [pinned...]} of a family, sorted, from its records."""
    recs = records(family)
    apt_known = set(_listed(ROOT / "apt-packages.txt"))
    apt = sorted({p for r in recs for p in r.apt})
    unknown = [p for p in apt if p not in apt_known]
    if unknown:
        raise ValueError(f"{ROOT / 'apt-packages.txt'}: lacks {', '.join(unknown)} (named by the {family} records)")
    pip_lines = _listed(ROOT / "pip-requirements.txt")
    npm_lines = _listed(ROOT / "node-tools.txt")
    return {"apt": apt,
            "pip": sorted(_pin(pip_lines, p, "==", ROOT / "pip-requirements.txt") for p in {p for r in recs for p in r.pip}),
            "npm": sorted(_pin(npm_lines, p, "@", ROOT / "node-tools.txt") for p in {p for r in recs for p in r.npm})}


def build_file(family):
    return ROOT / f"{family}.Containerfile"


def context_files(family):
    """{name: text} of the build context: the build file and the family's package lists."""
    pk = packages(family)
    return {"Containerfile": build_file(family).read_text(),
            **{f"{kind}.txt": "".join(p + "\n" for p in pk[kind]) for kind in ("apt", "pip", "npm")}}


_tags = {}


def tag(family):
    """localhost/vc2-<family>:<vc2 version>-<12 hex of the build inputs' hash>. executors.run asks once
    per execution: the hash is kept until a build input changes (size or mtime)."""
    inputs = [build_file(family)] + [ROOT / n for n in ("apt-packages.txt", "pip-requirements.txt", "node-tools.txt")]
    key = (family, str(ROOT), tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None for p in inputs))
    if key not in _tags:
        h = hashlib.sha256(json.dumps(context_files(family), sort_keys=True).encode()).hexdigest()[:12]
        _tags[key] = f"{PREFIX}{family}:{VERSION}-{h}"
    return _tags[key]


def image_for(language):
    """The image tag a language's programs run in."""
    return tag(languages.get(language).image)


def write_context(family, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in context_files(family).items():
        (out / name).write_text(text)
    return out


_present = {}


def present(engine, image):
    """Whether `engine` has `image` locally (we never pull). Cached per process."""
    key = (engine, image)
    if key not in _present:
        try:
            r = subprocess.run([engine, "image", "inspect", image], capture_output=True, timeout=30)
            _present[key] = r.returncode == 0
        except (OSError, subprocess.SubprocessError):
            _present[key] = False
    return _present[key]


def _main(argv):
    if argv[:1] == ["tag"] and len(argv) == 2:
        print(tag(argv[1]))
    elif argv[:1] == ["context"] and len(argv) == 3:
        write_context(argv[1], argv[2])
    elif argv[:1] == ["families"]:
        print(" ".join(FAMILIES))
    elif not argv:
        import shutil
        engines = [e for e in ("podman", "docker") if shutil.which(e)]
        for f in FAMILIES:
            t = tag(f)
            built = {e: present(e, t) for e in engines}
            print(f"{f:9s} {t:42s} {' '.join(r.name for r in records(f)):32s} "
                  + (", ".join(f"{e}: {'built' if b else 'not built'}" for e, b in built.items()) or "no engine"))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    try:
        _main(sys.argv[1:])
    except ValueError as e:
        raise SystemExit(f"error: {e}")
