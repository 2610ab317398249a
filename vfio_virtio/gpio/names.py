"""GPIO line names: parsing, validation and the gpio_names blob (virtio 1.3, 5.17.6.1).

Rules (spec 5.17.6.1 "Get Line Names" plus what the guest can display):

* Names are optional per line; an unnamed line is the empty string and contributes a lone
  NUL byte to the blob.
* Fewer names than lines is allowed: the remaining lines are unnamed. More names than lines
  is an error (a typo should not silently drop names).
* Each name is 7-bit printable ASCII (0x20..0x7e: the spec says 7-bit ASCII; control
  characters and NUL would break the zero-terminated stream), at most
  :data:`MAX_NAME_LEN` bytes (Linux's GPIO_MAX_NAME_SIZE is 32 including the NUL, so longer
  names would be truncated in the guest), and unique among named lines ("the name must be
  unique within a GPIO Device").
* Leading/trailing whitespace around each name is stripped.
* The blob is every line's name followed by NUL, in line order. When no line has a name the
  blob is empty and ``gpio_names_size`` is 0 (the device then does not support
  GET_LINE_NAMES, as the spec requires).
"""
from __future__ import annotations

import os

MAX_NAME_LEN = 31
MAX_NAMES_FILE = 4 << 20  # bytes; a names file larger than this is refused


def validate_names(names: list[str], lines: int) -> list[str]:
    """Check ``names`` against the rules above; return them padded with '' to ``lines``.

    Raises ValueError with a message naming the offending entry.
    """
    if not isinstance(lines, int) or lines < 1:
        raise ValueError(f"line count must be a positive integer, got {lines!r}")
    if len(names) > lines:
        raise ValueError(f"{len(names)} names given for {lines} lines")
    seen: dict[str, int] = {}
    out: list[str] = []
    for i, raw in enumerate(names):
        if not isinstance(raw, str):
            raise ValueError(f"name of line {i} is not a string")
        name = raw.strip()
        if len(name) > MAX_NAME_LEN:
            raise ValueError(f"name of line {i} is {len(name)} characters long "
                             f"(at most {MAX_NAME_LEN})")
        bad = [c for c in name if not 0x20 <= ord(c) <= 0x7E]
        if bad:
            raise ValueError(f"name of line {i} contains {bad[0]!r}: only printable 7-bit "
                             "ASCII is allowed")
        if name:
            if name in seen:
                raise ValueError(f"name {name!r} used for lines {seen[name]} and {i}: "
                                 "names must be unique")
            seen[name] = i
        out.append(name)
    out.extend([""] * (lines - len(out)))
    return out


def sanitize_names(names: list[str], lines: int) -> list[str]:
    """Best-effort version of :func:`validate_names` for names a host chip reports.

    Instead of refusing, it blanks names that are not printable ASCII or repeat an earlier
    name, truncates long ones, ignores extra entries and pads to ``lines``.
    """
    out: list[str] = []
    seen: set[str] = set()
    for raw in list(names)[:lines]:
        name = raw.strip()[:MAX_NAME_LEN] if isinstance(raw, str) else ""
        if any(not 0x20 <= ord(c) <= 0x7E for c in name) or name in seen:
            name = ""
        if name:
            seen.add(name)
        out.append(name)
    return out + [""] * (lines - len(out))


def parse_names_arg(arg: str, lines: int) -> list[str]:
    """Parse a comma-separated ``--names`` value ("a,,c": line 1 unnamed)."""
    if not isinstance(arg, str):
        raise ValueError("names must be a string")
    return validate_names(arg.split(","), lines)


def parse_names_file(path: str | os.PathLike, lines: int) -> list[str]:
    """Read one name per line from ``path`` (empty line = unnamed line).

    A trailing newline does not add a line. Raises ValueError for unreadable or invalid files.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_NAMES_FILE + 1)
    except OSError as e:
        raise ValueError(f"cannot read names file {os.fspath(path)!r}: {e.strerror}") from e
    if len(data) > MAX_NAMES_FILE:
        raise ValueError(f"names file {os.fspath(path)!r} is larger than {MAX_NAMES_FILE} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise ValueError(f"names file {os.fspath(path)!r} is not 7-bit ASCII "
                         f"(byte offset {e.start})") from e
    entries = text.splitlines()
    return validate_names(entries, lines)


def names_blob(names: list[str] | None) -> bytes:
    """The gpio_names memory block: each name NUL-terminated, in line order.

    Returns b'' when ``names`` is None or no line has a name (gpio_names_size = 0).
    ``names`` must already be validated.
    """
    if not names or not any(names):
        return b""
    return b"".join(n.encode("ascii") + b"\0" for n in names)
