"""Reads this project's docstrings (Google style, Markdown-ish) as reST.

- A fenced block (three backticks) becomes a literal block.
- `|` outside backticks is escaped (`|J|`, `||w||` are math here).
- `keras_lars.NAME` in single backticks becomes a cross-reference, so a
  docstring that names a public object that does not exist fails the strict
  build (nitpicky mode); other single-backtick spans are inline code.
"""

import re

_NAME = re.compile(r"(?<![`:\w])`(keras_lars(?:\.\w+)+)(\(\))?`(?!`)")


def _fences(lines):
    """Yields (line, is_code): fenced blocks become literal blocks."""
    inside, indent = False, ""
    for line in lines:
        if line.strip().startswith("```"):
            if not inside:
                indent = line[: len(line) - len(line.lstrip())]
                yield indent + "::", True
            yield "", True
            inside = not inside
            continue
        yield ("    " + line if inside and line.strip() else line), inside


_CODE = re.compile(r"(`[^`]*`)")


def _inline(line):
    parts = _CODE.split(line)
    for i in range(0, len(parts), 2):
        text = parts[i].replace("|", "\\|")  # |J| and ||w|| are math, not substitutions
        # reST wants a boundary around inline markup: `Variable`s -> `Variable`\ s
        if i > 0 and text[:1].isalnum():
            text = "\\ " + text
        if i + 1 < len(parts) and text[-1:].isalnum():
            text += "\\ "
        parts[i] = text
    return _NAME.sub(r":py:obj:`\1`", "".join(parts))


def process(app, what, name, obj, options, lines):
    lines[:] = [line if code else _inline(line) for line, code in _fences(lines)]


def setup(app):
    # Before napoleon (priority 500), on the Google-style text.
    app.connect("autodoc-process-docstring", process, priority=400)
    return {"parallel_read_safe": True}
