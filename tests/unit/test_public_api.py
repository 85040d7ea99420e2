"""The public face: what ``plait.kernel.client`` exports, and the old names kept."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyClass, verifyObject

from plait.kernel import client
from plait.kernel.client._mapping import TaskMapper, TaskParallelFunction

#: The names ``plait.kernel.client`` exported before the house was rebuilt.
BEFORE = """
    AsyncMultiEngineClient AsyncTaskClient CompositeError DependencyTimeout EngineError
    FullBlockingMultiEngineClient IFullBlockingMultiEngineClient IPendingResult
    InteractiveMultiEngineClient InvalidEngineID InvalidTaskID MapTask Mapper
    MultiEngineClient ParallelFunction PendingResult PlaitConnectionError PlaitError
    QueueCleared QueueStatusList RecoveryLoopError RemoteError RemoteException
    ResultAlreadyRetrieved ResultList ResultNS ResultNotCompleted SerializationError
    Serialized StopLocalExecution StringTask Task TaskAborted TaskAlreadyCompleted
    TaskClient TaskMapper TaskParallelFunction TaskResult TaskSpecError
    TaskSubmissionError remote strip_whitespace wrap_result_list
""".split()

DEPRECATED = {"TaskMapper": TaskMapper, "TaskParallelFunction": TaskParallelFunction}
REFERENCE_HELPERS = {"strip_whitespace", "wrap_result_list"}


def test_all_lists_each_public_name_once():
    assert len(client.__all__) == len(set(client.__all__))
    assert all(not name.startswith("_") for name in client.__all__)
    for name in client.__all__:
        assert hasattr(client, name), name


def test_every_name_users_had_still_works():
    assert set(BEFORE) - set(client.__all__) == set(DEPRECATED) | REFERENCE_HELPERS
    for name in REFERENCE_HELPERS:
        assert callable(getattr(client, name))


@pytest.mark.parametrize("name", sorted(DEPRECATED))
def test_deprecated_names_warn_and_give_the_shared_class(name):
    with pytest.warns(DeprecationWarning, match=f"client.{name} is deprecated"):
        value = getattr(client, name)
    assert value is DEPRECATED[name]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        client.nothing  # noqa: B018


def test_exported_objects_name_their_public_module():
    """Everything has ``__module__`` plait.kernel.client, except what is defined in
    plait.wire (it travels pickled under that name) and the reference's zope
    interfaces."""
    for name in [*client.__all__, *REFERENCE_HELPERS]:
        obj = getattr(client, name)
        module = obj.__module__
        if isinstance(obj, InterfaceClass):
            assert module == "plait.interfaces.multiengine", name
        elif module.startswith("plait.wire."):
            assert isinstance(obj, type) and (issubclass(obj, BaseException)
                                              or obj is client.Serialized), name
        else:
            assert module == "plait.kernel.client", (name, module)


def test_the_blocking_clients_are_derived_with_their_public_names():
    for cls in (client.MultiEngineClient, client.TaskClient):
        assert cls.__module__ == "plait.kernel.client"
        assert cls.__qualname__ == cls.__name__
    assert client.FullBlockingMultiEngineClient is client.MultiEngineClient
    assert client.Task is client.StringTask
    verifyClass(client.IFullBlockingMultiEngineClient, client.MultiEngineClient)


def test_the_exceptions_travel_under_their_wire_names():
    import pickle

    error = client.EngineError("engine 3 was lost")
    data = pickle.dumps(error)
    assert b"plait.wire.errors" in data and b"plait.kernel.client" not in data
    assert str(pickle.loads(data)) == "engine 3 was lost"


def test_mappers_and_parallel_functions_are_one_pair_for_both_clients():
    class Client:
        def _map_with(self, func, sequences, options):
            return ("mapped", func, sequences, options)

    mapper = client.Mapper(Client(), chunksize=3)
    assert repr(mapper) == "<Mapper chunksize=3>"
    pf = client.ParallelFunction(abs, mapper)
    assert pf([1, -2]) == pf.map([1, -2]) == ("mapped", abs, ([1, -2],), {"chunksize": 3})
    assert pf.__name__ == "abs" and repr(pf) == "<parallel function 'abs'>"
    with pytest.raises(TypeError, match="decorates a function, not a int"):
        client.ParallelFunction(3, mapper)


def test_the_engine_interpreter_has_a_public_path_and_the_old_one_warns():
    from plait.kernel.engine import get_interpreter
    from plait.kernel.engine.interpreter import get_interpreter as real

    assert get_interpreter is real
    sys.modules.pop("plait.kernel._interpreter", None)
    with pytest.warns(DeprecationWarning, match="from plait.kernel.engine import get_interpreter"):
        old = importlib.import_module("plait.kernel._interpreter")
    assert old.get_interpreter is real


def test_importing_the_client_does_not_load_the_engine_interpreter():
    code = ("import sys\nfrom plait.kernel import client\n"
            "print(sorted(m for m in sys.modules if m.startswith("
            "('plait.kernel.engine.interpreter', 'plait.kernel.controller'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_engine_is_an_iengine_server_behind_a_thin_adapter():
    from plait.adapters.engine_server import FoolscapEngine
    from plait.interfaces.engine import IEngineServer, RIEngine
    from plait.kernel.engine.process import Engine

    engine = Engine("pb://unused@127.0.0.1:1/unused")
    verifyObject(IEngineServer, engine)
    assert isinstance(engine.remote_self, FoolscapEngine) and engine.remote_self.engine is engine
    assert engine.call("ping", ()) is True
    ok, payload = engine.call("keys", ())  # a command: run by the engine's Commands
    assert ok is True

    class Server:  # records what the adapter hands over
        def __init__(self):
            self.submitted, self.killed = [], 0

        def submit(self, method, args):
            self.submitted.append((method, args))
            return "deferred"

        def call(self, method, args):
            raise AssertionError("the adapter runs nothing itself")

        def kill(self):
            self.killed += 1

        def skip_tasks(self, taskids):
            self.skipped = list(taskids)

    server = Server()
    adapter = FoolscapEngine(server)
    for method in RIEngine.names():
        assert callable(getattr(adapter, f"remote_{method}")), method
    assert adapter.remote_execute("a = 1", "") == "deferred"
    assert adapter.remote_execute(lines="b = 2", filename="f.py") == "deferred"  # by name
    assert adapter.remote_pull(["a"]) == "deferred"
    assert server.submitted == [("execute", ("a = 1", "")), ("execute", ("b = 2", "f.py")),
                                ("pull", (["a"],))]
    with pytest.raises(TypeError, match="unexpected arguments: bogus"):
        adapter.remote_reset(bogus=1)
    adapter.remote_kill()
    assert server.killed == 1 and adapter.remote_ping() is True
