"""Strings from run folders shown as plain text in Streamlit's Markdown.

Image ids, class codes and names, run names, notes, paths and error messages quoting them come
from files that may have been made by anyone (docs/security.md). st.markdown, st.caption,
st.error, headers and image captions all render Markdown: an id holding `![x](http://host/)`
would make the reviewer's browser fetch that URL. `md()` escapes every character Markdown (and
Streamlit's :color[], :emoji:, $math$ extensions) could read as syntax, so the text shows
literally. Use it for every such string put into a Markdown element.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character (CommonMark escapes)


def md(text: object) -> str:
    """`text` as Markdown that renders exactly as the text: punctuation backslash-escaped, line
    breaks and other control characters turned into spaces."""
    flat = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in str(text))
    return _PUNCTUATION.sub(r"\\\1", flat)
