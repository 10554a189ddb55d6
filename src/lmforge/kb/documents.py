"""Passages from a folder of documents (``lmforge kb build --docs FOLDER``): every file under it, recursively.

Passage files (.jsonl/.csv/.tsv/.parquet, optionally .gz) are read row by row like ``--docs FILE``; any other file
that is UTF-8 text (.txt, .md, .rst, .html, ...) is cut into passages of about :data:`PASSAGE_WORDS` words at
paragraph breaks, titled with its path (and the heading above, for Markdown and reST). Skipped, each with a warning
that names it: binary files, text that is not UTF-8, empty files, and links (or files) that lead outside the folder,
which is never read beyond.
"""

from __future__ import annotations

import html.parser
import logging
import os
import re
from pathlib import Path

from lmforge.data.readers import RECORD_FORMATS, base_suffix
from lmforge.kb.store import Passage

log = logging.getLogger("lmforge")

PASSAGE_WORDS = 150  # a passage is cut at the paragraph break after this many words (the bundled docs: ~100-200)
SNIFF_BYTES = 8192
MARKDOWN_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")


def read_folder(folder: Path, read_file) -> tuple[list[Passage], list[str]]:
    """The passages of every document under ``folder`` and a line per file skipped (why). ``read_file(path)`` reads
    a passage file (rows with 'text')."""
    root = folder.resolve()
    passages: list[Passage] = []
    skipped: list[str] = []

    def skip(path: Path, why: str) -> None:
        line = f"{path}: {why}"
        log.warning("skipped %s", line)
        skipped.append(line)

    for current, dirs, files in os.walk(folder, followlinks=False):
        here = Path(current)
        for name in sorted(dirs):  # a linked folder is not walked: say so if it leads outside
            if (here / name).is_symlink() and not _inside(here / name, root):
                skip(here / name, "a link to outside the folder (not followed)")
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink() and not d.startswith("."))
        for name in sorted(files):
            path = here / name
            if name.startswith("."):
                continue
            if not _inside(path, root):
                skip(path, "a link to outside the folder (not read)")
                continue
            if not path.is_file():
                skip(path, "not a regular file (a broken link?)")
                continue
            relative = path.relative_to(folder).as_posix()
            if base_suffix(path) in RECORD_FORMATS:
                passages += read_file(path)
                continue
            why, text = _text_of(path)
            if why:
                skip(path, why)
                continue
            if path.suffix.lower() in (".html", ".htm"):
                text = _html_text(text)
            found = cut(text, relative)
            if not found:
                skip(path, "no words in it")
            passages += found
    return passages, skipped


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except OSError:  # a link loop
        return False


def _text_of(path: Path) -> tuple[str | None, str]:
    """(why it is skipped, or None; its text)."""
    data = path.read_bytes()
    if not data.strip():
        return "empty", ""
    if b"\x00" in data[:SNIFF_BYTES]:
        return "a binary file", ""
    try:
        return None, data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); convert it with iconv", ""


class _TextOnly(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "pre", "section"):
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _html_text(markup: str) -> str:
    parser = _TextOnly()
    parser.feed(markup)
    return "".join(parser.parts)


def cut(text: str, name: str) -> list[Passage]:
    """A document's passages: paragraphs gathered up to ~PASSAGE_WORDS words, each titled ``name`` (and the
    heading it falls under); ids ``name#0``, ``name#1``, ..."""
    lines = text.replace("\r\n", "\n").split("\n")
    heading, pending, words = "", [], 0
    passages: list[Passage] = []

    def flush() -> None:
        nonlocal pending, words
        body = " ".join(pending).split()
        title = f"{name} / {heading}" if heading else name
        step = PASSAGE_WORDS if len(body) > 2 * PASSAGE_WORDS else max(1, len(body))  # a wall of text: in pieces
        for start in range(0, len(body), step):
            passages.append(Passage(f"{name}#{len(passages)}", title, " ".join(body[start : start + step])))
        pending, words = [], 0

    for i, line in enumerate(lines):
        match = MARKDOWN_HEADING.match(line)
        underlined = i + 1 < len(lines) and line.strip() and RST_UNDERLINE.match(lines[i + 1])
        if match or underlined:
            flush()
            heading = (match.group(1) if match else line).strip()
            continue
        if RST_UNDERLINE.match(line) and i and lines[i - 1].strip():
            continue  # the underline of the heading just taken
        if not line.strip():
            if words >= PASSAGE_WORDS:
                flush()
            continue
        pending.append(line)
        words += len(line.split())
    flush()
    return passages
