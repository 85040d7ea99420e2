"""The status page: a :class:`~plait.kernel.controller.status.StatusService` over HTTP.

``ipcontroller`` serves it with twisted.web on loopback unless told
(``--status-ip``; ``--status-port``), behind a random token in its URL, as
Jupyter does: the URL
(``security/ipcontroller-status.url``, private) is printed at start and
given to clients (``rc.dashboard_url``).  Without the token every request
gets 403.  What it offers, read-only:

* ``/?token=T``: the page (HTML, CSS and JavaScript in this file: nothing
  is fetched from elsewhere), kept up to date by
* ``/events?token=T``: a server-sent event stream, a snapshot every half
  second (at once when an engine joins or leaves);
* ``/status.json?token=T``: the current snapshot, for scripts;
* ``/metrics?token=T``: the same figures as Prometheus text;
* ``/history.json?token=T&status=S&engine=E&msg_id=M``: the hub's records
  of the recent tasks that match (see ``StatusService.search``).

The token grants reading these figures, the engines' hosts and pids, and
the times, engines, outcomes and failure texts of tasks; no code, argument
or result passes through the page.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from twisted.web import resource, server

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>plait status</title>
<style>
body { font: 14px sans-serif; margin: 1.5em; color: #222 }
h1 { font-size: 1.3em } .figure { display: inline-block; margin-right: 2em }
.figure b { font-size: 1.6em; display: block }
table { border-collapse: collapse; margin-top: 1em } td, th { padding: 3px 10px;
 border-bottom: 1px solid #ddd; text-align: right }
.busy { color: #b35900 } .idle { color: #2a7d2a } canvas { border: 1px solid #ccc }
h2 { font-size: 1.05em; margin-top: 1.5em } pre { background: #f6f6f6; padding: 6px;
 margin: 4px 0 10px; white-space: pre-wrap; font-size: 12px } .failed, .aborted { color: #b00 }
.succeeded { color: #2a7d2a } form { margin: 0.5em 0 }
</style></head><body>
<h1>plait controller</h1>
<div class="figure">engines<b id="engine-count">-</b></div>
<div class="figure">tasks done<b id="tasks-done">-</b></div>
<div class="figure">tasks/s<b id="rate">-</b></div>
<div class="figure">waiting for an engine<b id="unassigned">-</b></div>
<div class="figure">updated<b id="updated">-</b></div>
<p><canvas id="history" width="600" height="80"></canvas><br>
tasks finished per second, the last 5 minutes</p>
<table><thead><tr><th>engine</th><th>state</th>
<th title="load-balanced tasks handed to the engine: the one it runs, and those next in line on it">tasks</th>
<th title="requests on the engine's own queue: direct-view tasks (the running one included) and MultiEngine commands not yet sent">queued</th>
<th>done</th><th>task</th><th>host</th><th>pid</th><th>memory</th><th>CPU</th><th>uuid</th>
</tr></thead><tbody id="engines"></tbody></table>
<h2>task stream, the last minute</h2>
<p><canvas id="stream" width="800" height="40"></canvas><br>
one bar per task, a row per engine: <span class="succeeded">succeeded</span>,
<span class="failed">failed</span>, grey: aborted</p>
<h2>recent failures</h2><div id="failures">none</div>
<h2>history</h2>
<form id="search">status <select name="status"><option value="">any</option>
<option value="succeeded">succeeded</option><option value="failed">failed</option>
<option value="aborted">aborted</option></select>
engine <input name="engine" size="4"> msg_id <input name="msg_id" size="36">
<button>search</button></form>
<table><thead><tr><th>msg_id</th><th>status</th><th>engine</th><th>completed</th>
<th>seconds</th></tr></thead><tbody id="history-rows"></tbody></table>
<p id="history-note"></p>
<script>
const token = new URLSearchParams(location.search).get("token");
let shownAt = 0;  // the time of the snapshot being shown: what changes says since when
function cell(text, cls) { const td = document.createElement("td"); td.dataset.since = shownAt;
  td.textContent = text; if (cls) td.className = cls; return td; }
let rowsOf = "", failuresOf = "";
function engineTexts(e) {
  return [e.id, e.state, e.running, e.queue, e.completed, e.task ? "…" + e.task.slice(-12) : "",
    e.host || "", e.pid || "", e.memory ? (e.memory / 1048576).toFixed(0) + " MB" : "",
    e.cpu === null || e.cpu === undefined ? "" : e.cpu.toFixed(0) + " %", e.uuid.slice(0, 8)];
}
function set(node, text) { if (node.textContent !== String(text)) {
  node.textContent = text; node.dataset.since = shownAt; } }
function show(s) {
  shownAt = s.time;
  // (only what changed is touched: a browser then redraws little, twice a second)
  set(document.getElementById("engine-count"), s.engine_count);
  set(document.getElementById("tasks-done"), s.completed);
  set(document.getElementById("rate"), s.tasks_per_second.toFixed(1));
  set(document.getElementById("unassigned"), s.unassigned);
  set(document.getElementById("updated"), new Date(s.time * 1000).toLocaleTimeString());
  const body = document.getElementById("engines"), ids = s.engines.map(e => e.id).join();
  if (ids !== rowsOf) { rowsOf = ids; body.replaceChildren();
    for (const e of s.engines) { const tr = document.createElement("tr"); tr.className = "engine";
      for (const text of engineTexts(e)) tr.append(cell(text)); body.append(tr); } }
  s.engines.forEach((e, i) => { const tds = body.children[i].children;
    engineTexts(e).forEach((text, k) => set(tds[k], text));
    if (tds[1].className !== e.state) tds[1].className = e.state; });
  drawStream(s);
  const failures = s.failures.map(x => x.id).join();
  if (failures !== failuresOf) { failuresOf = failures;
    const f = document.getElementById("failures"); f.replaceChildren(); f.dataset.since = shownAt;
    if (!s.failures.length) f.textContent = "none";
    for (const x of s.failures) { const d = document.createElement("div");
      d.className = "failure"; d.textContent = new Date(x.time * 1000).toLocaleTimeString() +
      "  engine " + x.engine + "  " + x.msg_id; const p = document.createElement("pre");
      p.textContent = x.error; f.append(d, p); } }
  const c = document.getElementById("history"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const top = Math.max(1, ...s.rate), w = c.width / 300; g.fillStyle = "#3b7dd8";
  s.rate.slice(-300).forEach((v, i) => { const h = v / top * (c.height - 4);
    g.fillRect(i * w, c.height - h, Math.max(w - 1, 1), h); });
}
function drawStream(s) {
  const c = document.getElementById("stream"), g = c.getContext("2d");
  const ids = s.engines.map(e => e.id), rows = Math.max(1, ids.length);
  const height = Math.min(600, Math.max(40, rows * 12));
  if (c.height !== height) c.height = height;
  g.clearRect(0, 0, c.width, c.height);
  const h = c.height / rows, end = s.time, start = end - 60;
  const colour = {succeeded: "#2a9d2a", failed: "#c62828"};
  for (const [engine, t0, t1, status] of s.stream) { const row = ids.indexOf(engine);
    if (row < 0) continue; const x0 = Math.floor((Math.max(t0, start) - start) / 60 * c.width);
    g.fillStyle = colour[status] || "#999";  // (whole pixels: a short task shows, unblurred)
    g.fillRect(x0, Math.round(row * h) + 1,
               Math.max(2, Math.round((t1 - Math.max(t0, start)) / 60 * c.width)),
               Math.max(1, Math.round(h) - 2)); }
}
document.getElementById("search").onsubmit = async (ev) => { ev.preventDefault();
  const q = new URLSearchParams(new FormData(ev.target)); q.set("token", token);
  const r = await fetch("history.json?" + q); const rows = await r.json();
  const body = document.getElementById("history-rows"); body.replaceChildren();
  const note = document.getElementById("history-note");
  if (!r.ok) { note.textContent = rows.error; return; }
  note.textContent = rows.length + " records (the newest first)";
  for (const x of rows) { const tr = document.createElement("tr"); tr.className = "record";
    tr.append(cell(x.msg_id), cell(x.status || "pending", x.status), cell(x.engine_id ?? ""),
    cell(x.completed ? new Date(x.completed * 1000).toLocaleTimeString() : ""),
    cell(x.completed && x.started ? (x.completed - x.started).toFixed(3) : ""));
    body.append(tr); } };
const events = new EventSource("events?token=" + encodeURIComponent(token));
events.onmessage = (m) => show(JSON.parse(m.data));
</script></body></html>
"""


class _Forbidden(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"403 Forbidden: this page needs the token of its URL (see ipcontroller's log)\n"

    render_HEAD = render_POST = render_GET


class StatusPage(resource.Resource):
    """The root of the status site: every request must carry the token."""

    def __init__(self, status: Any, token: str):
        super().__init__()
        self.status = status
        self.token = token.encode()

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        given = (request.args.get(b"token") or [b""])[0]
        if not hmac.compare_digest(given, self.token):
            return _Forbidden()
        if path == b"":
            return _Body(b"text/html; charset=utf-8", lambda: _PAGE)
        if path == b"status.json":
            return _Body(b"application/json",
                         lambda: json.dumps(self.status.current()).encode())
        if path == b"metrics":
            return _Body(b"text/plain; version=0.0.4",
                         lambda: prometheus(self.status.current()).encode())
        if path == b"events":
            return _Events(self.status)
        if path == b"history.json":
            return _History(self.status)
        return resource.NoResource()

    def render_GET(self, request: Any) -> bytes:
        return self.getChild(b"", request).render(request)


_PAGE = PAGE.encode()


class _Body(resource.Resource):
    """A response of type ``kind`` whose body ``make()`` gives, never cached."""

    isLeaf = True

    def __init__(self, kind: bytes, make: Callable[[], bytes]):
        super().__init__()
        self.kind, self.make = kind, make

    def render_GET(self, request: Any) -> bytes:
        _fresh(request, self.kind)
        return self.make()


def _fresh(request: Any, kind: bytes) -> None:
    """A response of type ``kind``, never cached (every answer of the page's site)."""
    request.setHeader(b"content-type", kind)
    request.setHeader(b"cache-control", b"no-store")


def prometheus(snapshot: dict) -> str:
    """A snapshot as Prometheus text (gauges and counters named ``plait_...``)."""
    lines = [
        "# HELP plait_engines Engines registered.", "# TYPE plait_engines gauge",
        f"plait_engines {snapshot['engine_count']}",
        "# HELP plait_tasks_completed_total Tasks finished on engines.",
        "# TYPE plait_tasks_completed_total counter",
        f"plait_tasks_completed_total {snapshot['completed']}",
        "# HELP plait_tasks_per_second Tasks finished per second, the last 10 s.",
        "# TYPE plait_tasks_per_second gauge",
        f"plait_tasks_per_second {snapshot['tasks_per_second']:.3f}",
        "# HELP plait_tasks Tasks known to the controller, by state.",
        "# TYPE plait_tasks gauge",
    ]
    lines += [f'plait_tasks{{state="{state}"}} {n}' for state, n in snapshot["tasks"].items()]
    lines += ["# HELP plait_engine_completed_total Tasks each engine finished.",
              "# TYPE plait_engine_completed_total counter"]
    lines += [f'plait_engine_completed_total{{engine="{e["id"]}"}} {e["completed"]}'
              for e in snapshot["engines"]]
    lines += ["# HELP plait_engine_memory_bytes Resident memory of each engine.",
              "# TYPE plait_engine_memory_bytes gauge"]
    lines += [f'plait_engine_memory_bytes{{engine="{e["id"]}"}} {e["memory"]}'
              for e in snapshot["engines"] if e.get("memory") is not None]
    lines += ["# HELP plait_engine_cpu_percent CPU of each engine, percent of one core.",
              "# TYPE plait_engine_cpu_percent gauge"]
    lines += [f'plait_engine_cpu_percent{{engine="{e["id"]}"}} {e["cpu"]}'
              for e in snapshot["engines"] if e.get("cpu") is not None]
    return "\n".join(lines) + "\n"


class _Events(resource.Resource):
    """Server-sent events: the current snapshot, then each new one."""

    isLeaf = True

    def __init__(self, status: Any):
        super().__init__()
        self.status = status

    def render_GET(self, request: Any) -> Any:
        _fresh(request, b"text/event-stream")

        def send(snapshot: dict) -> None:
            request.write(b"data: " + json.dumps(snapshot).encode() + b"\n\n")

        send(self.status.current())
        unsubscribe = self.status.subscribe(send)
        request.notifyFinish().addBoth(unsubscribe)
        return server.NOT_DONE_YET


class _History(resource.Resource):
    """The hub's records of recent tasks, as JSON (status 400 for a bad query)."""

    isLeaf = True

    def __init__(self, status: Any):
        super().__init__()
        self.status = status

    def render_GET(self, request: Any) -> Any:
        _fresh(request, b"application/json")

        def arg(name: bytes) -> str:
            return (request.args.get(name) or [b""])[0].decode("utf-8", "replace").strip()

        engine = arg(b"engine")
        try:
            engine_id = int(engine) if engine else None
        except ValueError:
            engine_id = -1
        if engine_id is not None and engine_id < 0:
            request.setResponseCode(400)
            return json.dumps({"error": f"engine is an engine id, not {engine!r}"}).encode()
        d = self.status.search(arg(b"status") or None, engine_id, arg(b"msg_id") or None)
        gone: list[bool] = []  # the browser went away before the answer
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def send(rows: list) -> None:
            if not gone:
                request.write(json.dumps(rows).encode())
                request.finish()

        def refuse(failure: Any) -> None:
            if not gone:
                request.setResponseCode(400)
                request.write(json.dumps({"error": str(failure.value)}).encode())
                request.finish()

        d.addCallbacks(send, refuse)
        return server.NOT_DONE_YET


def site(status: Any, token: str) -> server.Site:
    """The twisted.web site of the status page (see the module documentation)."""
    return server.Site(StatusPage(status, token))
