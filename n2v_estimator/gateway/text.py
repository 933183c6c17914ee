"""Strings from strangers' files: what may be printed or written, and how it is shown.

A unit, a channel name, an ImageJ label, a model's version or an n2v setting is
text a stranger chose. Printed raw, ``ESC ] 0 ; ... BEL`` retitles the user's
terminal and ``ESC [ 2 J`` clears it, a line break forges extra output lines, a
right-to-left override reverses what follows; copied raw, a megabyte name or a
10 MB list of labels ends up in every output. So:

- :func:`plain` says whether a string may be kept, in a record or an output:
  text, at most ``limit`` characters, no control or format characters (tabs and
  line breaks only where ``lines`` allows them).
- :func:`shown` is how any string from a file is printed: control and format
  characters escaped as Python writes them (``\\x1b``, ``\\u202e``), cut to a
  length, on one line.
"""

from __future__ import annotations

import unicodedata

# A name, a unit, a label: what a record keeps of one.
MAX_TEXT = 256
# Unicode categories never kept or printed as they are: controls (C0, C1, DEL), format characters
# (bidirectional overrides, zero-width joiners), surrogates, private use, unassigned; line and
# paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _hidden(character: str) -> bool:
    return unicodedata.category(character) in _HIDDEN


def plain(value: object, limit: int = MAX_TEXT, *, lines: bool = False) -> bool:
    """Whether ``value`` is a string that may be kept as it is: at most ``limit`` characters,
    none of them a control or format character (``lines``: tabs and line breaks allowed).

    >>> plain("GFP"), plain("\\x1b[2J"), plain("a" * 300), plain("two\\nlines"), plain("two\\nlines", lines=True)
    (True, False, False, False, True)
    """
    if not isinstance(value, str) or len(value) > limit:
        return False
    allowed = "\t\n\r" if lines else ""
    return not any(_hidden(c) and c not in allowed for c in value)


def shown(value: object, limit: int = 120) -> str:
    """``value`` (any object; a string from a file) as one line to print: control and format
    characters escaped as Python's ``repr`` writes them, cut to ``limit`` characters.

    >>> shown("µm"), shown("\\x1b]0;owned\\x07"), shown("x" * 200, limit=10)
    ('µm', '\\\\x1b]0;owned\\\\x07', 'xxxxxxx...')
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) > 4 * limit:  # the escapes of a megabyte are not worth computing
        text = text[: 4 * limit]
    out = "".join(repr(c)[1:-1] if _hidden(c) else c for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."
