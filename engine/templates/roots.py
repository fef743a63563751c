"""The context roots: the names a template reads its values from, and the mapping that holds them."""

from __future__ import annotations

from typing import Any

ROOTS = ("steps", "inputs", "env", "secrets", "item", "index", "run")


class _ItemFirst:
    """A dict method's name on a Vars: the item of that name when there is one, else the method."""

    __slots__ = ("method", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.method = dict.__dict__[name]  # the method's descriptor (fromkeys: a classmethod's)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is not None and dict.__contains__(obj, self.name):
            return dict.__getitem__(obj, self.name)
        return self.method.__get__(obj, owner)


class Vars(dict[str, Any]):
    """A context root (inputs, env, steps, ...) where names win over dict methods.

    Jinja looks attributes up before items, so with a plain dict `inputs.items` would be
    dict.items; here an input, variable or step called `items`, `keys`, `values` or `get` is what
    it names, and so is any other name the mapping holds (as an attribute, which the sandbox then
    judges: a name starting with `_` or naming a mutating method such as `update` is refused, as
    on any dict). No instance attributes (`__slots__`), and Python's own lookups (`__class__`,
    for isinstance) stay those of a dict, at C speed.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:  # only for names that are no attribute
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        raise AttributeError(name)


for _name in [n for n in vars(dict) if not n.startswith("_")]:
    setattr(Vars, _name, _ItemFirst(_name))
del _name
