"""The context roots: the names a template reads its values from, and the mapping that holds them."""

from __future__ import annotations

from typing import Any

ROOTS = ("steps", "inputs", "env", "secrets", "item", "index", "run")


class Vars(dict[str, Any]):
    """A context root (inputs, env, steps, ...) where names win over dict methods.

    Jinja looks attributes up before items, so with a plain dict `inputs.items` would be
    dict.items; here an input, variable or step called `items`, `keys`, `values` or `get` is what
    it names. The sandbox still judges the attribute: a name starting with `_` or naming a
    mutating method (`update`, `pop`, ...) is refused as on any dict.
    No instance attributes (`__slots__`), so any other name can only be one of its items.
    """

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return super().__getattribute__(name)
