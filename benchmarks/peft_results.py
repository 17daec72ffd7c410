"""benchmarks/results/peft.md: the fine-tuning reference experiments, one section each.

Each experiment's benchmark rewrites only its own ``## N. title`` section, so they run (and
rerun) independently and the page keeps them in order:

    from peft_results import write_section
    write_section(2, "MiniLM-L6 ...", lines)
"""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "results" / "peft.md"
HEADER = [
    "# Fine-tuning pre-trained models: the reference experiments",
    "",
    "Each section is written by its own benchmark (command in the section) and says when and under "
    "what load it ran; rerunning one replaces only its section.",
    "",
]
_TITLE = re.compile(r"^## (\d+)\. ")


def sections(path: Path = PAGE) -> dict[int, list[str]]:
    """The page's sections by number (title line included)."""
    out: dict[int, list[str]] = {}
    key = None
    if path.exists():
        for line in path.read_text().splitlines():
            if m := _TITLE.match(line):
                key = int(m.group(1))
                out[key] = []
            if key is not None:
                out[key].append(line)
    return out


def write_section(number: int, title: str, lines: list[str], path: Path = PAGE) -> str:
    """Replace (or add) section ``number`` and return the page's new text."""
    blocks = sections(path)
    blocks[number] = [f"## {number}. {title}", "", *lines]
    text = "\n".join(HEADER + [line for k in sorted(blocks) for line in [*blocks[k], ""]]).rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text
