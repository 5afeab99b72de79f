"""The exception hierarchy: construction by name, structure, pickling, the public surface."""

from __future__ import annotations

import pickle

import dagengine
import pytest
from dagengine import exceptions as exc
from dagengine.results import ErrorInfo


def test_every_class_accepts_message_and_no_attributes() -> None:
    for name, cls in exc.ERROR_TYPES.items():
        err = cls("something went wrong")
        assert str(err) == "something went wrong"
        assert err.message == "something went wrong"
        assert isinstance(err, exc.DagEngineError)
        assert cls.__name__ == name
        assert cls.__doc__


@pytest.mark.parametrize(
    ("cls", "attrs"),
    [
        (exc.CycleError, {"cycle": ["a", "b", "a"]}),
        (exc.UnknownDependencyError, {"node_id": "a", "dependency": "ghost"}),
        (exc.DuplicateNodeError, {"node_id": "a"}),
        (exc.SelfDependencyError, {"node_id": "a"}),
        (exc.SpecError, {"path": "nodes[2].timeout"}),
        (exc.ImportPathError, {"node_id": "a", "path": "pkg:fn"}),
        (exc.LuaSyntaxError, {"line": 3, "node_id": "a"}),
        (exc.LuaTimeout, {"node_id": "a"}),
        (exc.NodeError, {"node_id": "a", "error_type": "ValueError", "traceback": "tb"}),
        (exc.NodeTimeout, {"node_id": "a", "timeout": 1.5}),
        (exc.SubWorkflowError, {"node_id": "a", "reference": "child@^1"}),
        (exc.RunFailed, {"result": None}),
    ],
)
def test_attributes_are_keyword_only_and_survive_pickling(
    cls: type[exc.DagEngineError], attrs: dict[str, object]
) -> None:
    err = cls("msg", **attrs)
    for key, value in attrs.items():
        assert getattr(err, key) == value
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is cls
    assert str(clone) == "msg"
    for key, value in attrs.items():
        assert getattr(clone, key) == value
    with pytest.raises(TypeError):
        cls("msg", *attrs.values())  # type: ignore[call-arg]


def test_hierarchy() -> None:
    assert issubclass(exc.ValidationError, ValueError)
    for cls in (
        exc.CycleError,
        exc.UnknownDependencyError,
        exc.DuplicateNodeError,
        exc.SelfDependencyError,
        exc.SpecError,
        exc.ImportPathError,
        exc.LuaSyntaxError,
    ):
        assert issubclass(cls, exc.ValidationError)
    assert issubclass(exc.LuaSyntaxError, exc.LuaError)
    for cls in (
        exc.LuaRuntimeError,
        exc.LuaInstructionLimit,
        exc.LuaMemoryLimit,
        exc.LuaTimeout,
        exc.LuaBadReturn,
        exc.LuaConversionError,
    ):
        assert issubclass(cls, exc.LuaError)
        assert not issubclass(cls, exc.ValidationError)
    assert issubclass(exc.NodeTimeout, exc.NodeError)
    assert issubclass(exc.RunTimeout, exc.RunFailed)
    assert not issubclass(exc.RunFailed, exc.ValidationError)


def test_error_from_info() -> None:
    lua = exc.error_from_info(ErrorInfo("LuaTimeout", "too slow"), node_id="n")
    assert type(lua) is exc.LuaTimeout
    assert lua.node_id == "n"
    timeout = exc.error_from_info(ErrorInfo("NodeTimeout", "late", node_id="m"))
    assert type(timeout) is exc.NodeTimeout
    assert timeout.node_id == "m"
    user = exc.error_from_info(ErrorInfo("ValueError", "bad", "Traceback..."), node_id="u")
    assert type(user) is exc.NodeError
    assert (user.node_id, user.error_type, user.traceback) == ("u", "ValueError", "Traceback...")
    assert str(user) == "bad"


def test_package_exports_every_exception_and_all_names_exist() -> None:
    for name in exc.ERROR_TYPES:
        assert name in dagengine.__all__
    for name in dagengine.__all__:
        assert hasattr(dagengine, name), name
    assert isinstance(dagengine.__version__, str)
    assert dagengine.__version__


def test_native_errors_are_our_classes() -> None:
    dag = dagengine.DAG()
    dag.add_node(dagengine.Node("a", ["a"]))
    with pytest.raises(exc.SelfDependencyError) as info:
        dag.preprocess()
    assert info.value.node_id == "a"
