"""References and recorded calls of a decorated workflow (:mod:`dagengine.authoring`):
:class:`Ref` (a task's output, a run input, or an item of one, while recording), the getters
that fill references at run time, :class:`Call` (one recorded task call, the node's callable)
and :data:`ITEM` (a mapped call's item). :class:`Ref` is importable from
:mod:`dagengine.authoring` and :mod:`dagengine` too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dagengine.nodes import NodeContext

__all__ = [
    "CONTAINERS",
    "ITEM",
    "Call",
    "Dependencies",
    "Item",
    "Ref",
    "compile_getter",
    "item_of",
    "walk",
]


class Dependencies(Protocol):
    """What :func:`compile_getter` registers each referenced node with (the recorder)."""

    def depend(self, ref: Ref) -> None: ...


class Ref:
    """A reference, while a workflow is being recorded, to a task's output or a run input,
    or to an item of one (``ref["key"]``, ``ref[0]``, chained as deep as needed).

    Passed to a task, it becomes a dependency on that task's node (inputs add none) and the
    task receives the referenced value at run time. It has no value while recording: testing
    it (``if ref``), iterating it or converting it raises a ``TypeError`` saying so.
    """

    __slots__ = ("_node", "_path")

    def __init__(self, node: str | None, path: tuple[str | int, ...]) -> None:
        # node None: a run input, whose name is path[0].
        self._node = node
        self._path = path

    @property
    def node_id(self) -> str | None:
        """The id of the node whose output this refers to; ``None`` for a run input."""
        return self._node

    @property
    def path(self) -> tuple[str | int, ...]:
        """The keys and indices into the node's output (or, for an input, into ``inputs``)."""
        return self._path

    def __getitem__(self, key: str | int) -> Ref:
        kind = type(key)
        if (
            kind is not str
            and kind is not int
            and (kind is bool or not isinstance(key, (str, int)))
        ):
            raise TypeError(
                f"{self!r}[{key!r}]: an item of a reference is a str key or an int index, "
                f"got {type(key).__name__}"
            )
        return Ref(self._node, (*self._path, key))

    def _no_value(self, what: str) -> TypeError:
        return TypeError(
            f"{self!r} has no value while the workflow is recorded, so it cannot be {what}; "
            "pass it to a task, which receives the value at run time"
        )

    def __bool__(self) -> bool:
        raise self._no_value("tested")

    def __iter__(self) -> Any:
        raise self._no_value("iterated")

    def __len__(self) -> int:
        raise self._no_value("measured")

    def __index__(self) -> int:
        raise self._no_value("used as a number")

    def __str__(self) -> str:
        raise self._no_value("formatted")

    def __repr__(self) -> str:
        root = "inputs" if self._node is None else f"results.{self._node}"
        items = self._path if self._node is not None else self._path[1:]
        head = root if self._node is not None else f"inputs.{self._path[0]}"
        return f"<Ref {head}{''.join(f'[{k!r}]' for k in items)}>"

    def _value(self, ctx: NodeContext) -> Any:
        """This reference's value in a node's context: one lookup per item of the path, which
        was built when the workflow was recorded (nothing is parsed here)."""
        node = self._node
        start: Any = ctx.inputs if node is None else ctx.results[node]
        value = start
        try:
            for key in self._path:
                value = value[key]
        except (KeyError, IndexError, TypeError):
            return walk(start, self._path, "inputs" if node is None else node)
        return value


def walk(value: Any, path: tuple[str | int, ...], where: str) -> Any:
    """``value[path[0]][path[1]]...``, or a ``LookupError`` naming the missing item."""
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            what = "key" if isinstance(key, str) else "index"
            got = type(value).__name__
            raise LookupError(
                f"{where} has no {what} {key!r} (the value there is a {got})"
            ) from None
        where = f"{where}[{key!r}]"
    return value


CONTAINERS = (list, tuple, dict)


def compile_getter(value: Any, recorder: Dependencies) -> Callable[[NodeContext], Any] | None:
    """The run-time getter of an argument that holds references (a :class:`Ref`, or a list,
    tuple or dict with references inside), registering each referenced node as a dependency;
    ``None`` for a constant."""
    kind = type(value)
    if kind is Ref:
        recorder.depend(value)
        getter: Callable[[NodeContext], Any] = value._value
        return getter
    if kind is list or kind is tuple:
        getters = [compile_getter(item, recorder) for item in value]
        if not any(getters):
            return None
        parts = [
            get if get is not None else _constant(item)
            for get, item in zip(getters, value, strict=True)
        ]
        if kind is tuple:
            return lambda ctx: tuple(get(ctx) for get in parts)
        return lambda ctx: [get(ctx) for get in parts]
    if kind is dict:
        entries = {key: compile_getter(item, recorder) for key, item in value.items()}
        if not any(entries.values()):
            return None
        pairs = [
            (key, get if get is not None else _constant(value[key])) for key, get in entries.items()
        ]
        return lambda ctx: {key: get(ctx) for key, get in pairs}
    return None


def _constant(value: Any) -> Callable[[NodeContext], Any]:
    return lambda ctx: value


class Call:
    """One recorded task call, the node's callable: ``fn(*args, **kwargs)`` with the
    references filled from the node's context. ``refs`` are the positional arguments that
    are plain references, as (position, node id or ``None`` for inputs, path), looked up
    inline; ``getters`` are the rest (keyword arguments, containers holding references)."""

    __slots__ = ("args", "fn", "getters", "item_args", "kwargs", "refs", "task_id")

    def __init__(
        self,
        task_id: str,
        fn: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        refs: tuple[tuple[int, str | None, tuple[str | int, ...]], ...],
        getters: list[tuple[int | str, Callable[[NodeContext], Any]]],
    ) -> None:
        self.task_id = task_id
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.refs = refs
        self.getters = getters
        # A mapped call whose other arguments are constants (the common case): the item and
        # those, without copying and filling the argument list per item.
        self.item_args: tuple[Any, ...] | None = None
        if not refs and not kwargs and len(getters) == 1 and getters[0] == (0, item_of):
            self.item_args = tuple(args[1:])

    def __call__(self, ctx: NodeContext) -> Any:
        item_args = self.item_args
        if item_args is not None:
            return self.fn(ctx.item, *item_args)
        args = self.args
        kwargs = self.kwargs
        try:
            if self.refs:
                args = args.copy()
                results = ctx.results
                for index, node, path in self.refs:
                    value: Any = ctx.inputs if node is None else results[node]
                    for key in path:
                        value = value[key]
                    args[index] = value
            if self.getters:
                if args is self.args:
                    args = args.copy()
                kwargs = kwargs.copy()
                for slot, get in self.getters:
                    if isinstance(slot, int):
                        args[slot] = get(ctx)
                    else:
                        kwargs[slot] = get(ctx)
        except (KeyError, IndexError, TypeError, LookupError):
            raise self._lookup_error(ctx) from None
        return self.fn(*args, **kwargs)

    def _lookup_error(self, ctx: NodeContext) -> LookupError:
        """The error of a missing input or output item, naming the task, the node and the
        item (the message is the node's error; no traceback into this module is needed)."""
        try:
            for _, node, path in self.refs:
                Ref(node, path)._value(ctx)
            for _, get in self.getters:
                get(ctx)
        except LookupError as exc:
            return LookupError(f"task {self.task_id} (node {ctx.node_id!r}): {exc}")
        return LookupError(f"task {self.task_id} (node {ctx.node_id!r}): an argument failed")


class Item:
    """Stands, in a mapped call's recorded arguments, for the item of each instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<item>"


ITEM = Item()


def item_of(ctx: NodeContext) -> Any:
    return ctx.item
