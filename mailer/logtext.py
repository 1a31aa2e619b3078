"""Text from a request (or anything else outside our control) made safe for a log line:
nothing in it can end the line, forge another, move the terminal's cursor or fill the log."""
from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
ELLIPSIS = "…"


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if char.isprintable():  # a space is printable; line and paragraph separators are not
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def loggable(value, limit: int = 200) -> str:
    """`value` as one printable line of at most `limit` characters: control and other
    invisible characters escaped as Python writes them (\\n, \\r, \\x1b, \\u2028), a
    backslash doubled so an escape cannot be faked, and an ellipsis where it was cut."""
    text = value if isinstance(value, str) else str(value)
    pieces, length = [], 0
    for char in text[:limit + 1]:  # a piece is never shorter than its character, so this is enough
        piece = _escaped(char)
        if length + len(piece) > limit:
            pieces.append(ELLIPSIS)
            break
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)
