"""Read fenced code blocks from the README and the docs pages, by section heading.

The tests that run documented examples all use this helper, so an example that moves between pages
only changes the page (and heading) a test names, never how its block is found.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

_FENCE_OPEN = re.compile(r"^(`{3,}|~{3,})\s*([^`\s]*)")
_HEADING = re.compile(r"^(#{1,6})\s")


def _blocks_and_lines(text: str):
    """Yield ("line", text) for lines outside fences and ("block", lang, body) for each fenced block."""
    fence = None
    for line in text.splitlines():
        if fence is None:
            m = _FENCE_OPEN.match(line)
            if m:
                fence, lang, body = m.group(1), m.group(2), []
            else:
                yield ("line", line)
        elif line.strip().startswith(fence) and not line.strip()[len(fence) :].strip(fence[0] + " "):
            yield ("block", lang, body, fence)
            fence = None
        else:
            body.append(line)


def section(path: Path, heading: str) -> str:
    """Text of the section whose heading line starts with `heading` (e.g. "## The flow core").

    The section runs to the next heading of the same or a higher level; a `#` line inside fenced code
    (a comment in a bash block) is no heading. Fails, naming the page, when the heading is missing or
    appears more than once.
    """
    level = len(heading) - len(heading.lstrip("#"))
    assert 1 <= level <= 6 and heading[level : level + 1] == " ", f"not a markdown heading: {heading!r}"
    out: list[str] = []
    found, inside = 0, False
    for item in _blocks_and_lines(Path(path).read_text()):
        if item[0] == "line":
            m = _HEADING.match(item[1])
            if m and inside and len(m.group(1)) <= level:
                inside = False
            if m and len(m.group(1)) == level and item[1].startswith(heading):
                found += 1
                inside = True
            if inside:
                out.append(item[1])
        elif inside:
            _, lang, body, fence = item
            out.extend([fence + lang, *body, fence])
    assert found == 1, f"{Path(path).name}: heading {heading!r} found {found} times"
    return "\n".join(out) + "\n"


def fenced_blocks(path: Path, heading: str | None = None, lang: str = "python") -> list[str]:
    """The bodies of the ```lang blocks of a page, or of one section of it (see `section`), in order."""
    text = Path(path).read_text() if heading is None else section(path, heading)
    return ["\n".join(item[2]) + "\n" for item in _blocks_and_lines(text) if item[0] == "block" and item[1] == lang]
