"""A real Grid Engine on this machine for the batch tests: ``sge_qmaster`` and
``sge_execd`` from Debian's packages (gridengine-master, gridengine-exec and
gridengine-client), run in a cell of the test's own.

The cell lives in the test's folder: an ``SGE_ROOT`` there (linking the
packages' binaries), its own bootstrap, spool folders, configuration and ports,
so the system-wide cell the packages set up is neither used nor changed.  The
daemons run as root in the foreground (``SGE_ND``).  This host is the admin,
submit and execution host, with one queue, :data:`QUEUE`, of 8 slots and no
load thresholds, so that jobs of a few engines fit on a 2-core machine; the
scheduler runs every second.  Two settings of the packages' defaults would
stop the tests: jobs of users below uid 1000 (root) are refused
(``min_uid``), and a client whose address resolves to another name than the
one it gives (127.0.0.1 is ``localhost`` here) is turned away, which the
cell's ``host_aliases`` prevents.  ``SGE_ROOT``, ``SGE_CELL``,
``SGE_QMASTER_PORT`` and ``SGE_EXECD_PORT`` point the commands (qsub, qstat,
qdel) at the cell while the context lasts.  :func:`unavailable` says what is
missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from support import free_port

DAEMONS = ("/usr/sbin/sge_qmaster", "/usr/sbin/sge_execd")
TOOLS = ("/usr/lib/gridengine/spoolinit", "/usr/lib/gridengine/spooldefaults")
#: What the cell's SGE_ROOT links: the packages' binaries, libraries and helpers.
LINKED = {"bin": "/var/lib/gridengine/bin", "lib": "/var/lib/gridengine/lib",
          "utilbin": "/var/lib/gridengine/utilbin", "util": "/usr/share/gridengine/util"}
RESOURCES = Path("/usr/share/gridengine/util/resources")
CONFIGURATION = Path("/usr/share/gridengine/default-configuration")
INSTALL = "apt-get install gridengine-master gridengine-exec gridengine-client"
CELL = "plait"
QUEUE = "plait.q"
SLOTS = 8
ENV = ("SGE_ROOT", "SGE_CELL", "SGE_QMASTER_PORT", "SGE_EXECD_PORT")


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "running the Grid Engine daemons needs root"
    for path in (*DAEMONS, *TOOLS, *LINKED.values(), CONFIGURATION):
        if not os.path.exists(path):
            return f"{path} is not installed ({INSTALL})"
    for command in ("qsub", "qstat", "qdel", "qconf"):
        if shutil.which(command) is None:
            return f"{command} is not installed ({INSTALL})"
    return None


def _queue(host: str) -> str:
    """The queue: every attribute of Grid Engine's queue template, written out."""
    limits = "".join(f"{kind}_{what:<19} INFINITY\n" for what in (
        "rt", "cpu", "fsize", "data", "stack", "core", "rss", "vmem") for kind in "sh")
    return f"""qname                 {QUEUE}
hostlist              {host}
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               NONE
rerun                 FALSE
slots                 {SLOTS}
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
{limits}"""


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


class GridEngine:
    """The daemons of a cell in ``folder``; a context manager."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.root = folder / "root"
        self.common = self.root / CELL / "common"
        self.host = socket.gethostname()
        self.procs: list[subprocess.Popen] = []
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> GridEngine:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        f = self.folder
        spool = f / "spool"
        for sub in (self.common, spool / "qmaster", spool / "execd", spool / "db", f / "log"):
            sub.mkdir(parents=True, exist_ok=True)
        for name, target in LINKED.items():
            (self.root / name).symlink_to(target)
        spooling = f"{self.common};{spool / 'db'}"
        (self.common / "bootstrap").write_text(f"""admin_user              none
default_domain          none
ignore_fqdn             true
spooling_method         classic
spooling_lib            libspoolc
spooling_params         {spooling}
binary_path             /usr/lib/gridengine
qmaster_spool_dir       {spool / 'qmaster'}
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1
""")
        (self.common / "act_qmaster").write_text(f"{self.host}\n")
        names = [self.host]
        for address in ("127.0.0.1", "::1"):
            try:
                name, aliases, _ = socket.gethostbyaddr(address)
            except OSError:
                continue
            names += [n for n in (name, *aliases) if n not in names]
        (self.common / "host_aliases").write_text(" ".join(names) + "\n")
        settings = {"execd_spool_dir": str(spool / "execd"), "min_uid": "0", "min_gid": "0",
                    "mailer": "/bin/true", "load_report_time": "00:00:05"}
        lines = []
        for line in CONFIGURATION.read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            lines.append(f"{key} {settings[key]}" if key in settings else line)
        (f / "configuration").write_text("\n".join(lines) + "\n")
        self._saved = {name: os.environ.get(name) for name in ENV}
        os.environ.update(SGE_ROOT=str(self.root), SGE_CELL=CELL,
                          SGE_QMASTER_PORT=str(free_port()), SGE_EXECD_PORT=str(free_port()))
        self._run(TOOLS[0], "classic", "libspoolc", spooling, "init")
        self._run(TOOLS[1], "configuration", str(f / "configuration"))
        self._run(TOOLS[1], "complexes", str(RESOURCES / "centry"))
        self._run(TOOLS[1], "usersets", str(RESOURCES / "usersets"))
        self._run(TOOLS[1], "managers", "root")
        deadline = time.monotonic() + 60
        self._daemon(DAEMONS[0], "qmaster")
        self._until(lambda: self._ask("qconf", "-sh").returncode == 0, deadline,
                    "sge_qmaster did not answer")
        self._run("qconf", "-as", self.host)
        sched = self._run("qconf", "-ssconf").stdout
        quick = {"schedule_interval": "0:0:1", "flush_submit_sec": "1",
                 "flush_finish_sec": "1", "job_load_adjustments": "NONE"}
        (f / "scheduler").write_text("".join(
            f"{line.split()[0]} {quick[line.split()[0]]}\n" if line.split()[:1] and
            line.split()[0] in quick else f"{line}\n" for line in sched.splitlines()))
        self._run("qconf", "-Msconf", str(f / "scheduler"))
        self._daemon(DAEMONS[1], "execd")
        self._until(lambda: self._ask("qconf", "-se", self.host).returncode == 0, deadline,
                    "sge_execd did not register with sge_qmaster")
        (f / "queue").write_text(_queue(self.host))
        self._run("qconf", "-Aq", str(f / "queue"))
        self._until(self._queue_ready, deadline, f"the queue {QUEUE} did not come up")

    def _daemon(self, path: str, name: str) -> None:
        log = open(self.folder / "log" / f"{name}.out", "wb")  # noqa: SIM115
        with log:
            self.procs.append(subprocess.Popen(
                [path], env={**os.environ, "SGE_ND": "1"}, cwd=self.folder,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))

    def _ask(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        done = self._ask(*command)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}"
                               f"{self.logs()}")
        return done

    def _until(self, ready, deadline: float, what: str) -> None:
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"{what}: {self.logs()}")
            time.sleep(0.1)

    def _queue_ready(self) -> bool:
        """Whether the queue instance of this host is there with no state (not ``u``,
        unknown, as it is until the execd reports its load)."""
        out = self._ask("qstat", "-f", "-q", QUEUE).stdout
        rows = [line.split() for line in out.splitlines() if line.startswith(f"{QUEUE}@")]
        return len(rows) == 1 and len(rows[0]) == 5

    def jobs(self) -> dict[str, list[str]]:
        """The jobs qstat lists: job id -> the states of its lines (tasks)."""
        out = self._ask("qstat", "-u", "*").stdout
        listed: dict[str, list[str]] = {}
        for line in out.splitlines()[2:]:
            fields = line.split()
            if len(fields) > 4:
                listed.setdefault(fields[0], []).append(fields[4])
        return listed

    def job_state(self, job: str) -> str:
        """The job's state as qstat lists it (``qw``, ``r``, ``Eqw``...; the states of
        its tasks joined by ``,`` when they differ); "" once it is gone."""
        return ",".join(dict.fromkeys(self.jobs().get(job, [])))

    def logs(self) -> str:
        files = [*(self.folder / "log").glob("*.out"), *(self.folder / "spool").glob(
            "**/messages")]
        return "\n".join(f"{p}:\n{p.read_text(errors='replace')[-2000:]}" for p in files)

    def __exit__(self, *exc: object) -> None:
        if self.procs and self.procs[0].poll() is None:
            self._ask("qdel", "-u", "*")  # every job of the cell: the tests'
            deadline = time.monotonic() + 30
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.1)
        tree = _children()
        left: list[int] = []
        todo = [p.pid for p in self.procs]
        while todo:  # the jobs' shepherds outlive the execd: they are stopped here
            pid = todo.pop()
            left += tree.get(pid, [])
            todo += tree.get(pid, [])
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(3)  # the qmaster takes some 10 s to stop: not waited for
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
