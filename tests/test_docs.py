"""The docs: README.md and docs/*.md.

- every relative link leads to a file, and an anchor to a heading of that file;
- README.md stays short enough to read in five minutes;
- the commands of the fenced ``bash`` blocks run as written: the cheap ones (``--help``,
  ``python -m dhnn.params FILE``, ``python -m dhnn.pipeline.deps``) are run, read-only, in the
  project; for the others, the project files and modules they name must exist.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 12_500
# Pages that README.md links to and that other branches add (the Open Images guide, the experiments
# page); until they are merged, a link to one of them may dangle. Delete an entry once its page exists.
PENDING: set[Path] = set()  # pages linked before they exist (none now)

FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# commands cheap enough to run here (seconds, nothing written)
CHEAP = [re.compile(p) for p in (
    r"^\S.* --help$",
    r"^python -m dhnn\.params [\w./-]+\.ya?ml$",
    r"^python -m dhnn\.pipeline\.deps$",
)]
PROJECT_DIRS = ("configs/", "scripts/", "benchmarks/", "tests/", "notebooks/", "taxonomies/", "docs/")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a `#` line in a bash block is no heading)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links() -> list[tuple[Path, str]]:
    out = []
    for page in PAGES:
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                out.append((page, target))
    return out


def _commands() -> list[tuple[Path, str]]:
    """Each command of a fenced bash block: trailing comments dropped, continued lines joined."""
    out = []
    for page in PAGES:
        for lang, body in FENCE.findall(page.read_text(encoding="utf-8")):
            if lang not in ("bash", "sh", "shell"):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s+)#.*$", "", line).strip()
                if line:
                    out.append((page, " ".join(line.split())))
    return out


def _cheap(command: str) -> bool:
    return any(p.match(command) for p in CHEAP)


def test_links_resolve() -> None:
    assert _links(), "no links found: the link pattern is broken"
    bad = []
    for page, target in _links():
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if dest in PENDING and not dest.exists():
            continue
        where = f"{_rel(page)}: {target}"
        if not dest.exists():
            bad.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{where}: no heading with the anchor #{anchor}")
    assert bad == [], "broken links:\n" + "\n".join(bad)


def test_readme_is_short() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; move detail into docs/ (at most {README_MAX_BYTES:,})"


def test_every_page_is_linked_from_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(readme)}
    missing = [_rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert missing == [], f"docs pages that README.md does not link to: {missing}"


def test_named_files_exist() -> None:
    """The project files and `python -m` modules that the docs' bash commands name exist."""
    bad = []
    for page, command in _commands():
        words = shlex.split(command)
        for i, word in enumerate(words):
            if word.startswith(PROJECT_DIRS) and not (ROOT / word).exists():
                bad.append(f"{_rel(page)}: `{command}`: no file {word}")
            if word == "-m" and i + 1 < len(words) and words[i + 1].startswith("dhnn"):
                module = ROOT.joinpath(*words[i + 1].split("."))
                if not (module.with_suffix(".py").is_file() or (module / "__init__.py").is_file()):
                    bad.append(f"{_rel(page)}: `{command}`: no module {words[i + 1]}")
    assert bad == [], "\n".join(bad)


CHEAP_COMMANDS = sorted({command for _, command in _commands() if _cheap(command)})


def test_cheap_commands_found() -> None:
    """The docs show at least these cheap commands, so the run below is not vacuous."""
    for needed in ("dhnn predict --help", "python -m dhnn.params params.yaml", "python -m dhnn.pipeline.deps"):
        assert needed in CHEAP_COMMANDS, f"no page shows `{needed}` in a bash block"


@pytest.mark.parametrize("command", CHEAP_COMMANDS)
def test_cheap_command_runs(command: str) -> None:
    """Run as a reader would in the activated .venv, from the project root; exit 0 and nothing written."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stderr[-2000:]}"
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before, f"`{command}` changed the project:\n{after}"
