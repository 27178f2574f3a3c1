"""The error tree in relay/errors.py's docstring is the tree in the code: every class a client
can see is drawn there with its status and code, no two classes render alike (but the pair
BossDB itself shares), and no class takes a builtin's name."""

from __future__ import annotations

import builtins
import re

from relay import errors
from relay.errors import PassThroughError, RelayError

#: BossDB answers both with 400 and TYPE_ERROR (1002): a client cannot tell them apart there
#: either, and the message says which.
SHARED = {frozenset({"InvalidResolution", "CutoutTypeError"})}


def _classes() -> list[type[RelayError]]:
    found: list[type[RelayError]] = []
    pending: list[type[RelayError]] = [RelayError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__ == errors.__name__]


def _drawn() -> dict[str, tuple[str, str]]:
    """Class name → (status, code) as the docstring's tree draws them."""
    assert errors.__doc__ is not None
    return {name: (status, code) for name, status, code in
            re.findall(r"(\w+) \((\w+), (\w+)\)", errors.__doc__)}


def test_every_class_is_drawn_with_its_status_and_code() -> None:
    drawn = _drawn()
    for cls in _classes():
        assert cls.__name__ in drawn, f"{cls.__name__} is missing from errors.py's tree"
        if cls is PassThroughError:
            assert drawn[cls.__name__] == ("any", "any")
        else:
            assert drawn[cls.__name__] == (str(cls.status), str(cls.code)), cls.__name__
    assert set(drawn) == {cls.__name__ for cls in _classes()}, "a drawn class does not exist"


def test_the_tree_is_drawn_where_each_class_hangs() -> None:
    assert errors.__doc__ is not None
    depth = {}
    for line in errors.__doc__.splitlines():
        # the tree is indented four spaces; after that, each level is four characters wide
        match = re.match(r"    ((?:│   |    )*)(?:├── |└── )?(\w+) \(", line)
        if match and match[2] in {cls.__name__ for cls in _classes()}:
            depth[match[2]] = len(match[1]) // 4 + (0 if match[2] == "RelayError" else 1)
    for cls in _classes():
        if cls is not RelayError:
            parent = cls.__mro__[1].__name__
            assert depth[cls.__name__] == depth[parent] + 1, f"{cls.__name__} under {parent}"


def test_no_two_classes_render_alike() -> None:
    seen: dict[tuple[int, int], str] = {}
    for cls in _classes():
        if cls is PassThroughError:
            continue
        key = (cls.status, cls.code)
        if key in seen:
            assert frozenset({seen[key], cls.__name__}) in SHARED, \
                f"{cls.__name__} and {seen[key]} both render as {key}"
        seen[key] = cls.__name__


def test_no_class_takes_a_builtin_name() -> None:
    for cls in _classes():
        assert not hasattr(builtins, cls.__name__), cls.__name__
        assert not cls.__name__.endswith("_"), cls.__name__
