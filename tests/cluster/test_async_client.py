"""The asynchronous client, from Twisted code that runs its own reactor."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys
    from twisted.internet import defer, reactor, task
    from plait.kernel.client import AsyncMultiEngineClient, CompositeError

    @defer.inlineCallbacks
    def main(reactor, furl):
        mec = yield AsyncMultiEngineClient.connect(furl)
        print("ids", (yield mec.get_ids()))
        yield mec.push({"a": 21}, targets=[0, 1])
        r = yield mec.execute("b = a * 2; print(b)", targets=[0, 1])
        print("stdout", [x["stdout"] for x in r])
        print("pull", (yield mec.pull("b", targets=1)))
        pr = yield mec.execute("c = 1", targets=0, block=False)
        print("pending", type(pr).__name__)
        r = yield pr.deferred()
        print("pending result", r[0]["input"]["raw"])
        try:
            yield mec.execute("1/0", targets=0)
        except CompositeError as e:
            print("error", e.elist[0][2].ename)
        pr2 = yield mec.execute("import time; time.sleep(0.2)", targets=0, block=False)
        try:
            pr2.get_result()
        except RuntimeError as e:
            print("blocking refused:", "Twisted code" in str(e) or "reactor" in str(e))

    task.react(main, [sys.argv[1]])
''')


def test_async_client_in_a_twisted_program(cluster_factory, tmp_path):
    c = cluster_factory(2)
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), c.furl_file("mec")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "ids [0, 1]",
        "stdout ['42\\n', '42\\n']",
        "pull [42]",
        "pending PendingResult",
        "pending result c = 1",
        "error ZeroDivisionError",
        "blocking refused: True",
    ]
