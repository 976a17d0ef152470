"""Real English text and Python code that ship with the interpreter.

Everything the offline suite reads comes from here:

- the language reference in `pydoc_data.topics.topics` (topic name -> text),
  as raw blocks (for single documents) and as whitespace-collapsed prose
  passages (for "Paragraph k:" style tasks);
- the source files of a fixed list of pure-Python standard library modules,
  read from disk (never imported for their side effects);
- the docstrings of public functions of a fixed list of modules, read from
  their source with `ast` where they have one.

All lists come out in a fixed order (sorted keys, fixed module lists, no set
iteration), so generation depends only on the Python version, not on hash
randomisation. Results are cached: the sources are read once per process.
"""

import ast
import codecs
import functools
import importlib
import importlib.util
import inspect
import re
import tokenize

from pydoc_data.topics import topics

# A header block is a title underlined with *, =, -, ~ or ^ (reST style).
_UNDERLINE = re.compile(r"[*=~^-]{3,}")
# Sentence ends: ., ! or ? followed by whitespace and a capital or a quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"*])")
# A prose passage grows by whole blocks until it has at least this many characters.
PASSAGE_MIN_CHARS = 500
# Trailing passages shorter than this (the end of a topic) are dropped.
PASSAGE_KEEP_CHARS = 200

# Large, long-lived pure-Python modules for next-line completion.
CODE_MODULES = (
    "argparse", "ast", "calendar", "collections", "configparser", "csv",
    "dataclasses", "difflib", "email.message", "enum", "fractions", "ftplib",
    "functools", "gettext", "http.client", "imaplib", "inspect", "json.decoder",
    "json.encoder", "logging", "optparse", "pathlib", "pprint", "random",
    "shlex", "shutil", "smtplib", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "traceback", "typing",
    "unittest.case", "urllib.parse", "uuid", "zipfile",
)

# Modules whose functions are classified by their docstrings. No name is a
# substring of another, because the classification metric matches class
# names as substrings of the prediction; all are platform independent.
DOC_MODULES = (
    "base64", "binascii", "builtins", "calendar", "heapq", "inspect", "math",
    "operator", "random", "shutil", "statistics", "time", "unicodedata",
)


@functools.lru_cache(maxsize=None)
def zen() -> tuple[str, ...]:
    """The 19 aphorisms of the Zen of Python (module `this`), read from its source.

    `this` prints them when imported and stores them rot13-encoded, so its
    source is parsed and decoded instead of imported.
    """
    tree = ast.parse("".join(module_lines("this")))
    encoded, = [node.value.value for node in tree.body
                if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["s"]]
    lines = codecs.decode(encoded, "rot13").strip().split("\n")
    return tuple(line for line in lines[1:] if line)  # without the title line


def collapse(text: str) -> str:
    """Text on one line, runs of whitespace replaced by a single space."""
    return " ".join(text.split())


def sentences(text: str) -> list[str]:
    """Split one-line prose into sentences (a simple punctuation rule)."""
    return [s for s in _SENTENCE_END.split(text) if s]


def _is_prose(block: str) -> bool:
    """A block of running text: not indented code or grammar, not a header."""
    lines = block.split("\n")
    return (
        bool(block.strip())
        and not block[0].isspace()
        and "::=" not in block
        and not any(_UNDERLINE.fullmatch(line) for line in lines)
    )


@functools.lru_cache(maxsize=None)
def topic_blocks() -> tuple[tuple[str, str], ...]:
    """(topic, block) for every blank-line separated block of the reference.

    Topics overlap (e.g. 'specialnames' repeats parts of 'customization'), so
    a block whose text occurred in an earlier topic is dropped: no sample can
    contain the same block twice unless a task puts it there on purpose.
    """
    seen = set()
    out = []
    for name in sorted(topics):
        for block in topics[name].strip("\n").split("\n\n"):
            block = block.strip("\n")
            key = collapse(block)
            if not key or key in seen:
                continue
            seen.add(key)
            out.append((name, block))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def topic_starts() -> tuple[int, ...]:
    """Indices into topic_blocks() where a new topic begins."""
    blocks = topic_blocks()
    return tuple(i for i, (name, _) in enumerate(blocks) if i == 0 or blocks[i - 1][0] != name)


@functools.lru_cache(maxsize=None)
def passages() -> tuple[str, ...]:
    """Distinct one-line prose passages of at least PASSAGE_KEEP_CHARS characters.

    Consecutive prose blocks of one topic are joined until the passage has
    PASSAGE_MIN_CHARS characters, so a passage reads like a short paragraph.
    """
    out = []
    current, current_topic = [], None
    for name, block in topic_blocks():
        if name != current_topic:
            out.append(" ".join(current))
            current, current_topic = [], name
        if _is_prose(block):
            current.append(collapse(block))
            if sum(len(p) + 1 for p in current) >= PASSAGE_MIN_CHARS:
                out.append(" ".join(current))
                current = []
    out.append(" ".join(current))
    return tuple(p for p in out if len(p) >= PASSAGE_KEEP_CHARS)


@functools.lru_cache(maxsize=None)
def module_lines(name: str) -> tuple[str, ...]:
    """Source lines (with their line endings) of a standard library module."""
    origin = importlib.util.find_spec(name).origin
    with tokenize.open(origin) as f:  # honours the file's encoding declaration
        return tuple(f.read().splitlines(keepends=True))


@functools.lru_cache(maxsize=None)
def code_line_starts(name: str) -> tuple[int, ...]:
    """Indices of lines whose first token is code (not a string or comment).

    This leaves out blank lines, comments, lines inside multi-line strings
    and lines that start with a string (docstrings).
    """
    lines = module_lines(name)
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
            tokenize.DEDENT, tokenize.ENCODING, tokenize.STRING, tokenize.ENDMARKER}
    first = {}
    for tok in tokenize.generate_tokens(iter(lines).__next__):
        if tok.start[0] not in first and tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            first[tok.start[0]] = tok.type
    return tuple(sorted(row - 1 for row, kind in first.items() if kind not in skip))


def _first_paragraph(doc: str) -> str:
    """The first paragraph of a docstring that is not a signature line."""
    for para in doc.split("\n\n"):
        text = collapse(para)
        if text and not re.match(r"^[\w.]+\(.*\)( -> .*)?$", text):
            return text
    return ""


def _docstrings(module_name: str) -> list[str]:
    """Docstrings of the public functions and methods a module defines.

    A module with Python source is read with `ast`, not imported: other
    libraries patch functions of modules such as `inspect` at import time,
    and what they replace must not change the suite. A built-in module has
    no source; its C functions (`inspect.isbuiltin`) are read instead.
    """
    if importlib.util.find_spec(module_name).origin.endswith(".py"):
        tree = ast.parse("".join(module_lines(module_name)))
        nodes = []
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                nodes.extend(node.body)  # methods of public classes
            else:
                nodes.append(node)
        return [ast.get_docstring(node) or "" for node in nodes
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and not node.name.startswith("_")]
    module = importlib.import_module(module_name)
    return [inspect.getdoc(getattr(module, attr)) or "" for attr in sorted(vars(module))
            if not attr.startswith("_") and inspect.isbuiltin(getattr(module, attr))]


@functools.lru_cache(maxsize=None)
def docstring_items() -> tuple[tuple[str, str], ...]:
    """(module, first docstring paragraph) of public functions of DOC_MODULES.

    A text found twice (under two modules, or twice in one) is dropped, so
    every label is right and no item is ambiguous.
    """
    items = [(module_name, _first_paragraph(doc))
             for module_name in DOC_MODULES for doc in _docstrings(module_name)]
    items = [(module_name, text) for module_name, text in items if len(text) >= 20]
    counts = {}
    for _, text in items:
        counts[text] = counts.get(text, 0) + 1
    return tuple(item for item in items if counts[item[1]] == 1)
