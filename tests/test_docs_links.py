"""Every relative link in README.md and docs/**/*.md points at a file or folder that exists and
that git does not ignore, so that the evidence the docs cite is really in the repository (a file
that only exists in the author's checkout is as dead as a missing one). http(s) links are not
checked."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# [text](target "optional title") and <img src="target">; code spans and fenced blocks are skipped
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(?:<([^>]+)>|([^)\s]+))(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def relative_links(text: str) -> list[str]:
    """The link targets of a markdown text that name a local path (anchors stripped)."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = [a or b for a, b in MARKDOWN_LINK.findall(prose)] + IMG_SRC.findall(prose)
    local = [t.split("#", 1)[0] for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]
    return [unquote(t) for t in local if t]


def test_the_link_finder_sees_every_kind_of_link() -> None:
    text = ('[a](docs/a.md) ![b](img/b.png "title") [c](docs/c.md#part) [d](#anchor) '
            '[e](https://example.org/x) <img src="docs/f.png" width="50%"> `[g](not/a/link)`\n'
            "```\n[h](in/a/fence.md)\n```\n[i](<with space.md>)")
    assert relative_links(text) == ["docs/a.md", "img/b.png", "docs/c.md", "with space.md", "docs/f.png"]


def git_ignored(paths: list[Path]) -> set[Path]:
    """Those of ``paths`` that git ignores (and does not track); empty outside a git checkout."""
    if not paths or not (ROOT / ".git").exists() or shutil.which("git") is None:
        return set()
    listed = "\n".join(str(p.relative_to(ROOT)) for p in paths)
    out = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--stdin"], input=listed,
                         capture_output=True, text=True, check=False).stdout
    return {ROOT / line for line in out.splitlines() if line}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document: Path) -> None:
    targets = {link: (document.parent / link).resolve() for link in relative_links(document.read_text())}
    dead = [link for link, path in targets.items() if not path.exists()]
    assert not dead, f"{document.relative_to(ROOT)} links to missing paths: {dead}"
    inside = [path for path in targets.values() if path.is_relative_to(ROOT)]
    ignored = sorted(str(p.relative_to(ROOT)) for p in git_ignored(inside))
    assert not ignored, f"{document.relative_to(ROOT)} links to paths git ignores (never committed): {ignored}"
