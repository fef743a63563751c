"""The context roots: the names a template reads its values from, and the mapping that holds them."""

from __future__ import annotations

from typing import Any

ROOTS = ("steps", "inputs", "env", "secrets", "item", "index", "run")


class _ItemFirst:
    """A dict method's name on a Vars: no attribute when the Vars holds an item of that name (so
    Jinja, which tries the attribute first, finds the item); the method otherwise."""

    __slots__ = ("method", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.method = dict.__dict__[name]  # the method's descriptor (fromkeys: a classmethod's)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is not None and dict.__contains__(obj, self.name):
            raise AttributeError(self.name)
        return self.method.__get__(obj, owner)


class Vars(dict[str, Any]):
    """A context root (inputs, env, steps, ...) where names win over dict methods.

    Jinja looks attributes up before items, so with a plain dict `inputs.items` would be
    dict.items; here an input, variable or step called `items`, `keys`, `values` or `get` is what
    it names. Otherwise a Vars is a plain dict to Jinja: `inputs.x` is the item `x` (the sandbox
    only judges attributes, and a Vars has none but a dict's), and so are Python's own lookups
    (`__class__`, for isinstance), at C speed. No instance attributes (`__slots__`).
    """

    __slots__ = ()


for _name in [n for n in vars(dict) if not n.startswith("_")]:
    setattr(Vars, _name, _ItemFirst(_name))
del _name
