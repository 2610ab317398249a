"""Docs that match the tree: every relative link and file path the docs mention exists, and
every ``*.md`` a source file points to is in the repository.

A reader who follows a pointer from README.md, docs/*.md or a code comment must land on a
file. (Issue 16: several files pointed to a NOTES.md that is not in the repo, and
docs/INTERFACES.md named a module that does not exist.)
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCE_DIRS = ("vfio_virtio", "benchmarks", "tests", "fuzz", "scripts", "cffi_build", "guest")
SOURCE_SUFFIXES = {".py", ".c", ".h", ".sh", ".md"}

MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# a repository path: a file with a source suffix (bare or with directories), or a directory
PATH_TOKEN = re.compile(r"^(?:[\w.*-]+/)*[\w*-]+\.(?:md|py|c|h|sh|toml|json|rst)$"
                        r"|^(?:[\w.*-]+/)+$")
MD_MENTION = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")
# docs name modules relative to the package or the build directory, as well as to the root
BASES = (ROOT, ROOT / "vfio_virtio", ROOT / "cffi_build")
SKIP_DIRS = {".git", ".venv", "build", "results", "__pycache__"}
# Named on purpose but not files of this repository: outputs that `make bench` / `make fuzz`
# write, and files of other projects' source trees.
NOT_IN_REPO = {
    "summary.md", "results.json", "guest_resume.json",          # make bench outputs
    "benchmarks/results/*/guest_resume.json",
    "out/corpus/README.md",                                     # make fuzz output
    "docs/specs/pci-ids.rst",                                   # QEMU's source tree
    "hw/vfio-user/pci.c",                                       # QEMU's source tree
    "virtio_pci_common.c", "drivers/gpio/gpio-virtio.c",        # Linux's source tree
    "drivers/gpio/gpio-sim.c", "kernel/irq/irq_sim.c", "linux/gpio.h",
    "lib/irq.c", "lib/libvfio-user.c", "lib/tran_sock.c",       # libvfio-user's source tree
}


def repo_files() -> set[str]:
    """Names of every file in the working tree (for bare names such as `virtq.c`)."""
    names = set()
    for p in ROOT.rglob("*"):
        if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts):
            names.add(p.name)
    return names


REPO_FILES = repo_files()


def exists(rel: str, *bases: Path) -> bool:
    rel = rel.split("::", 1)[0].split("#", 1)[0].rstrip("/")
    if not rel or rel in NOT_IN_REPO:
        return True
    if "/" not in rel and rel in REPO_FILES:
        return True
    for base in bases:
        if any(ch in rel for ch in "*?["):
            if list(base.glob(rel)):
                return True
        elif (base / rel).exists():
            return True
    return False


def path_tokens(text: str) -> set[str]:
    """File paths in code spans: relative, no placeholders, no host paths or options."""
    out = set()
    for span in CODE_SPAN.findall(text):
        for tok in span.split():
            tok = tok.strip(",;()")
            if tok.startswith(("/", "~", "-", ".")) or re.search(r"[<>$=:@%{}]", tok):
                continue
            if PATH_TOKEN.match(tok):
                out.add(tok)
    return out


def source_files() -> list[Path]:
    files = []
    for d in SOURCE_DIRS:
        files += [p for p in (ROOT / d).rglob("*") if p.suffix in SOURCE_SUFFIXES
                  and p.is_file() and "results" not in p.parts]
    return files


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_markdown_links_resolve(doc):
    bad = [t for t in MD_LINK.findall(doc.read_text())
           if not re.match(r"^[a-z]+:", t) and not exists(t, doc.parent)]
    assert not bad, f"{doc.name}: links to missing files: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_file_paths_named_in_docs_exist(doc):
    bad = sorted(t for t in path_tokens(doc.read_text()) if not exists(t, doc.parent, *BASES))
    assert not bad, f"{doc.name}: names files that do not exist: {bad}"


def test_docs_named_in_source_files_and_prose_exist():
    bad = []
    for f in [*source_files(), *DOCS]:
        if f == Path(__file__).resolve():
            continue
        for m in MD_MENTION.finditer(f.read_text(errors="replace")):
            if not exists(m.group(1), ROOT, ROOT / "docs", f.parent):
                bad.append(f"{f.relative_to(ROOT)}: {m.group(1)}")
    assert not bad, "pointers to docs that are not in the repo:\n" + "\n".join(bad)


def test_the_checker_sees_what_it_should():
    """The patterns catch a missing file and pass over things that are not repo paths."""
    text = "see `virtio/transport.py`, `docs/NOPE.md`, `/dev/gpiochip0`, `--lines N`, `0x10`"
    assert path_tokens(text) == {"virtio/transport.py", "docs/NOPE.md"}
    assert not exists("virtio/transport.py", *BASES)
    assert exists("virtio/pci_transport.py", *BASES)
    assert [m.group(1) for m in MD_MENTION.finditer("(NOTES.md; docs/PM.md)")] == \
        ["NOTES.md", "docs/PM.md"]
