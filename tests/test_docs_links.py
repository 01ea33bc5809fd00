"""Every relative link of the README and the docs pages points at a file that exists, and every
``#anchor`` at a heading of its page (GitHub's slugs), so moving text between pages cannot leave a
dead link behind."""

import re
from pathlib import Path

from markdown_blocks import DOCS, README, ROOT, _blocks_and_lines

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces → ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Anchors of a page's headings (repeats get GitHub's ``-1``, ``-2`` suffixes)."""
    seen: dict[str, int] = {}
    out = set()
    for item in _blocks_and_lines(page.read_text()):
        m = _HEADING.match(item[1]) if item[0] == "line" else None
        if m:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def links(page: Path) -> list[str]:
    """Link targets outside fenced code."""
    lines = [item[1] for item in _blocks_and_lines(page.read_text()) if item[0] == "line"]
    text = re.sub(r"`[^`\n]*`", "", "\n".join(lines))  # inline code is no link
    return _LINK.findall(text)


def test_slug_matches_githubs_rules():
    assert slug("Replay buffer (zarr 3, format 2)") == "replay-buffer-zarr-3-format-2"
    assert slug("Comparing runs (`lfm-policy compare`)") == "comparing-runs-lfm-policy-compare"
    assert slug("What is written to `--out`") == "what-is-written-to---out"
    assert slug("Distilled local blocks: LFM at NFE = N") == "distilled-local-blocks-lfm-at-nfe--n"


def test_every_relative_link_and_anchor_resolves():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    bad = []
    for page in pages:
        for target in links(page):
            if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked here (no network)
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading in {dest.name})")
    assert not bad, "dead links:\n" + "\n".join(bad)
