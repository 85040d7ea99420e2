"""A profile's cluster configuration: the file ``cluster.toml``.

The file lives in the profile's folder (``$PLAIT_DIR/profile_<name>/cluster.toml``)
and is read by ``ipcluster`` and :class:`plait.parallel.Cluster`.  It is
optional, and so is every key in it; a command-line flag given explicitly
wins over the file.  A complete file::

    [cluster]
    n = 4                        # engines to start
    engines = "local"            # how engines start: "local" or "mpi"
    timeout = 30.0               # seconds to wait for the engines to register

    [controller]
    ip = "127.0.0.1"             # interface to listen on
    location = "host1"           # host name or address written into FURLs
    client_port = 0              # 0: a random free port
    engine_port = 0
    client_channel_port = 0
    engine_channel_port = 0
    data_port = 0
    status_port = 0              # the status page's
    status_ip = "127.0.0.1"      # ... and its interface (plain HTTP: loopback by default)
    scheme = "leastload"
    hwm = 0
    db = "sqlite"
    engine_timeout = 30

    [mpi]
    mpiexec = "mpiexec"          # the launcher command
    args = ["--oversubscribe"]   # extra arguments for mpiexec

The keys (a bool is never taken for a number; the ``[ssh]`` and ``[batch]``
keys, and ``[cluster] controller`` / ``controller_host`` for a controller
started over SSH, are in the table of ``docs/clusters.md``, which lists every
key):

| key                         | type                         | default          | meaning |
|-----------------------------|------------------------------|------------------|---------|
| `[cluster] n`               | int >= 1                     | the CPU count    | how many engines to start |
| `[cluster] engines`         | `"local"` or `"mpi"`         | `"local"`        | engines start as processes of this host, or under `mpiexec` |
| `[cluster] timeout`         | number > 0                   | `30.0`           | seconds to wait for the engines to register |
| `[controller] ip`           | string                       | `"127.0.0.1"`    | interface the controller listens on (`"0.0.0.0"`: all; then give `location`) |
| `[controller] location`     | string                       | the `ip` value   | host name or address written into FURLs, the one engines and clients use |
| `[controller] client_port`  | int 0..65535                 | `0`              | port for clients (0: a random free port) |
| `[controller] engine_port`  | int 0..65535                 | `0`              | port for engines (0: a random free port) |
| `[controller] client_channel_port` | int 0..65535          | `0`              | port of the clients' command channel |
| `[controller] engine_channel_port` | int 0..65535          | `0`              | port of the engines' command channel |
| `[controller] data_port`    | int 0..65535                 | `0`              | port for large data (pushes, pulls, results) |
| `[controller] status_port`  | int 0..65535                 | `0`              | port of the status page (behind a token) |
| `[controller] status_ip`    | text                         | `"127.0.0.1"`    | interface of the status page |
| `[controller] scheme`       | `fifo`, `lru`, `plainrandom`, `twobin`, `leastload`, `weighted` | `"leastload"` | how the task scheduler picks engines |
| `[controller] hwm`          | int >= 0                     | adaptive         | tasks outstanding per engine (0: no limit) |
| `[controller] db`           | `sqlite`, `memory`, `none`   | `"sqlite"`       | where the hub keeps task records |
| `[controller] engine_timeout` | int >= 3                   | `30`             | seconds of silence after which an engine's host counts as gone |
| `[mpi] mpiexec`             | string                       | `"mpiexec"`      | the MPI launcher: a name on `PATH` or a path |
| `[mpi] args`                | list of strings              | `[]`             | extra arguments given to `mpiexec` |

The ``[controller]`` keys are the flags of ``ipcontroller`` (``client_port``
is ``--client-port``).  A file that cannot be read or parsed, an unknown
section or key, or a bad value raises :class:`~plait.wire.errors.ClusterError`
naming the file, the section and the key.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from plait.wire.errors import ClusterError

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomli is only installed on 3.10, where mypy (set to 3.10) looks for it
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

CONFIG_FILE = "cluster.toml"
ENGINES = ("local", "mpi", "ssh", "slurm", "sge", "pbs", "lsf")
SCHEMES = ("fifo", "lru", "plainrandom", "twobin", "leastload", "weighted")
DBS = ("sqlite", "memory", "none")
CONTROLLERS = ("local", "ssh", "slurm")


class _Spec(NamedTuple):
    """What one key accepts: described, tested, and converted once accepted."""

    wanted: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda value: value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(low: int, high: int | None = None) -> _Spec:
    wanted = f"an int >= {low}" if high is None else f"an int from {low} to {high}"
    return _Spec(wanted, lambda v: _is_int(v) and v >= low and (high is None or v <= high))


def _choice(names: tuple[str, ...]) -> _Spec:
    return _Spec(f"one of {', '.join(names)}", lambda v: isinstance(v, str) and v in names)


_TEXT = _Spec("a non-empty string", lambda v: isinstance(v, str) and v != "")
_BOOL = _Spec("true or false", lambda v: isinstance(v, bool))
_SECONDS = _Spec(
    "a number > 0",
    lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and v > 0,
    float,
)
_SECONDS_OR_NONE = _Spec(
    "a number >= 0",
    lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v) and v >= 0,
    float,
)
_STRINGS = _Spec(
    "a list of strings",
    lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v),
    tuple,
)

_SCHEME = _Spec(f"one of {', '.join(SCHEMES)}, or MODULE:NAME (a scheme of one's own)",
                lambda v: isinstance(v, str) and (v in SCHEMES or re.fullmatch(
                    r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v) is not None))


def _is_hosts(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and k and _is_int(v) and v >= 1 for k, v in value.items()))


_HOSTS = _Spec("a table of host names to engine counts (ints >= 1)", _is_hosts, dict)

#: Every section and its keys, in the order of the documentation.
SECTIONS: dict[str, dict[str, _Spec]] = {
    "cluster": {"n": _int(1), "engines": _choice(ENGINES), "timeout": _SECONDS,
                "controller": _choice(CONTROLLERS), "controller_host": _TEXT,
                "restart_engines": _BOOL, "engine_memory_limit": _SECONDS,
                "restart_controller": _BOOL, "engine_reconnect": _SECONDS_OR_NONE},
    "controller": {
        "ip": _TEXT,
        "location": _TEXT,
        "client_port": _int(0, 65535),
        "engine_port": _int(0, 65535),
        "client_channel_port": _int(0, 65535),
        "engine_channel_port": _int(0, 65535),
        "data_port": _int(0, 65535),
        "status_port": _int(0, 65535),
        "status_ip": _TEXT,
        "scheme": _SCHEME,
        "hwm": _int(0),
        "db": _choice(DBS),
        "engine_timeout": _int(3),
    },
    "mpi": {"mpiexec": _TEXT, "args": _STRINGS},
    "ssh": {"hosts": _HOSTS, "command": _TEXT, "args": _STRINGS, "python": _TEXT,
            "plait_dir": _TEXT, "tunnel": _BOOL},
    "batch": {"partition": _TEXT, "account": _TEXT, "time": _TEXT, "directives": _STRINGS,
              "template": _TEXT},
}

#: The fields of ClusterConfig that the sections other than [controller] fill.
_FIELDS = {("cluster", "n"): "n", ("cluster", "engines"): "engines",
           ("cluster", "timeout"): "timeout", ("cluster", "controller"): "controller_launcher",
           ("cluster", "controller_host"): "controller_host", ("ssh", "tunnel"): "tunnel",
           ("cluster", "restart_engines"): "restart_engines",
           ("cluster", "engine_memory_limit"): "engine_memory_limit",
           ("cluster", "restart_controller"): "restart_controller",
           ("cluster", "engine_reconnect"): "engine_reconnect",
           ("mpi", "mpiexec"): "mpiexec",
           ("mpi", "args"): "mpi_args", ("ssh", "hosts"): "ssh_hosts",
           ("ssh", "command"): "ssh_command", ("ssh", "args"): "ssh_args",
           ("ssh", "python"): "ssh_python", ("ssh", "plait_dir"): "ssh_plait_dir",
           ("batch", "partition"): "partition", ("batch", "account"): "account",
           ("batch", "time"): "walltime", ("batch", "directives"): "directives",
           ("batch", "template"): "template"}
#: with_overrides' flags: the field's name, or a [controller] key.
_FLAGS = {flag: section_key for section_key, flag in _FIELDS.items()}
_FLAGS.update({key: ("controller", key) for key in SECTIONS["controller"]})


def _checked(where: str, spec: _Spec, value: Any) -> Any:
    """``value`` converted, or a ClusterError saying ``where`` it is bad and why."""
    if not spec.accepts(value):
        shown = f"{value!r} (a bool)" if isinstance(value, bool) else repr(value)
        raise ClusterError(f"{where} must be {spec.wanted}, not {shown}")
    return spec.convert(value)


@dataclass(frozen=True)
class ClusterConfig:
    """A profile's cluster options; see the module's documentation for each key.

    ``n`` None stands for the number of CPUs, decided when the cluster starts.
    ``controller`` holds only the ``[controller]`` keys the file gives.
    """

    n: int | None = None
    engines: str = "local"
    timeout: float = 30.0
    controller: dict[str, Any] = field(default_factory=dict, hash=False)
    controller_launcher: str = "local"
    controller_host: str | None = None
    tunnel: bool = False
    restart_engines: bool = False
    engine_memory_limit: float | None = None
    restart_controller: bool = True
    engine_reconnect: float = 60.0
    mpiexec: str = "mpiexec"
    ssh_hosts: dict[str, int] = field(default_factory=dict, hash=False)
    ssh_command: str = "ssh"
    ssh_args: tuple[str, ...] = ()
    ssh_python: str | None = None
    ssh_plait_dir: str | None = None
    partition: str | None = None
    account: str | None = None
    walltime: str | None = None
    directives: tuple[str, ...] = ()
    template: str | None = None
    mpi_args: tuple[str, ...] = ()
    path: Path | None = None

    def with_overrides(self, **flags: Any) -> ClusterConfig:
        """A copy where every flag that is not None replaces the file's value.

        Flags: ``n``, ``engines``, ``timeout``, ``mpiexec``, ``mpi_args``, and
        the ``[controller]`` keys, which go into ``.controller``.  A bad value
        raises ClusterError, as in the file; an unknown flag, TypeError.
        """
        unknown = sorted(set(flags) - set(_FLAGS))
        if unknown:
            raise TypeError(f"with_overrides() got unknown flags: {', '.join(unknown)}; "
                            f"known: {', '.join(_FLAGS)}")
        changes: dict[str, Any] = {}
        controller = dict(self.controller)
        for flag, value in flags.items():
            if value is None:
                continue
            section, key = _FLAGS[flag]
            value = _checked(f"option {flag}", SECTIONS[section][key], value)
            if section == "controller":
                controller[key] = value
            else:
                changes[flag] = value
        return replace(self, controller=controller, **changes)

    def controller_args(self) -> list[str]:
        """The ``ipcontroller`` flags for ``.controller``, in the documented
        order: ``['--ip=0.0.0.0', '--client-port=5000']``."""
        return [f"--{key.replace('_', '-')}={self.controller[key]}"
                for key in SECTIONS["controller"] if key in self.controller]


def load_config(profile_dir: Path) -> ClusterConfig:
    """The configuration in ``profile_dir/cluster.toml``; the defaults when
    there is no such file.  ClusterError when the file cannot be read or
    parsed, or holds an unknown section or key or a bad value."""
    path = Path(profile_dir) / CONFIG_FILE
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return ClusterConfig()
    except OSError as err:
        raise ClusterError(f"{path}: cannot read the file: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ClusterError(f"{path}: not UTF-8 text: {err}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ClusterError(f"{path}: not valid TOML: {err}") from None
    known_sections = ", ".join(f"[{name}]" for name in SECTIONS)
    values: dict[str, Any] = {"path": path}
    controller: dict[str, Any] = {}
    for section, table in data.items():
        if section not in SECTIONS:
            what = f"section [{section}]" if isinstance(table, dict) else f"key {section} outside any section"
            raise ClusterError(f"{path}: unknown {what}; the sections are {known_sections}")
        if not isinstance(table, dict):
            raise ClusterError(f"{path}: {section} must be a section ([{section}]), not {table!r}")
        specs = SECTIONS[section]
        for key, value in table.items():
            if key not in specs:
                raise ClusterError(f"{path}: unknown key [{section}] {key}; "
                                   f"the keys of [{section}] are {', '.join(specs)}")
            value = _checked(f"{path}: [{section}] {key}", specs[key], value)
            if section == "controller":
                controller[key] = value
            else:
                values[_FIELDS[section, key]] = value
    return ClusterConfig(controller=controller, **values)


#: The ``[controller]`` keys, which are also the controller options of ``ipcluster``
#: and of :class:`plait.parallel.Cluster`.
CONTROLLER_OPTIONS = tuple(SECTIONS["controller"])


def controller_options(config: ClusterConfig) -> dict[str, Any]:
    """Where the controller runs, as ClusterProcesses takes it."""
    return {"controller": config.controller_launcher, "controller_host": config.controller_host,
            "tunnel": config.tunnel, "restart_engines": config.restart_engines,
            "engine_memory_limit": config.engine_memory_limit,
            "restart_controller": config.restart_controller,
            "engine_reconnect": config.engine_reconnect}


def ssh_options(config: ClusterConfig) -> dict[str, Any]:
    """The ``[ssh]`` options of ``config``, as the SSH launcher takes them."""
    return {"hosts": dict(config.ssh_hosts), "command": config.ssh_command,
            "args": tuple(config.ssh_args), "python": config.ssh_python,
            "plait_dir": config.ssh_plait_dir}


def batch_options(config: ClusterConfig) -> dict[str, Any]:
    """The ``[batch]`` options of ``config`` that are set, as the batch launcher takes them."""
    options = {"partition": config.partition, "account": config.account,
               "time": config.walltime, "template": config.template,
               "directives": list(config.directives) or None}
    return {k: v for k, v in options.items() if v is not None}


def read_hosts(hosts: Any) -> dict[str, int]:
    """``hosts`` as {host: engines}: a dict as is, a list of hosts (one engine
    each, a host named twice gets two), or the path of a file of lines
    ``HOST [ENGINES]`` (``#`` starts a comment).  ClusterError for anything else."""
    if isinstance(hosts, dict):
        return dict(hosts)
    if isinstance(hosts, (list, tuple)):
        table: dict[str, int] = {}
        for host in hosts:
            if not isinstance(host, str) or not host:
                raise ClusterError(f"a host is a name, not {host!r}")
            table[host] = table.get(host, 0) + 1
        return table
    if isinstance(hosts, (str, os.PathLike)):
        try:
            text = open(hosts).read()
        except OSError as exc:
            raise ClusterError(f"cannot read the hosts file {hosts}: {exc.strerror}") from None
        table = {}
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()):
                raise ClusterError(f"{hosts}:{number}: a line is HOST [ENGINES], not {line!r}")
            table[fields[0]] = table.get(fields[0], 0) + (int(fields[1]) if len(fields) == 2
                                                          else 1)
        return table
    raise ClusterError(f"hosts is a dict, a list or a hosts file, not {hosts!r}")
