"""Jinja templates: one immutable sandbox with strict undefined, native values, references.

sandbox.py      the sandboxed environment (and parsing with it)
roots.py        the context roots templates read (`steps`, `inputs`, ...) and `Vars`
shapes.py       a template's shape: what templates that differ only in text and names share
compiled.py     templates compiled once (per shape where there is one): text or native values
refs.py         what a template refers to, from its AST: dependencies, unknown names
render.py       rendering a step's templates, with errors that point into the file
"""

from stepchain.templates.refs import FILTER, TEST, Reference, references
from stepchain.templates.render import TemplateFailure, evaluate, render_text, render_value
from stepchain.templates.roots import ROOTS, Vars
from stepchain.templates.sandbox import environment

__all__ = [
    "FILTER",
    "ROOTS",
    "TEST",
    "Reference",
    "TemplateFailure",
    "Vars",
    "environment",
    "evaluate",
    "references",
    "render_text",
    "render_value",
]
