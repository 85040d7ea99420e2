"""cluster.toml: read back, refused with a message naming the file and key,
overridden by flags, and turned into ipcontroller flags."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from plait.cluster.config import CONFIG_FILE, ClusterConfig, load_config
from plait.wire.errors import ClusterError

FULL = """\
[cluster]
n = 4
engines = "mpi"
timeout = 12

[controller]
ip = "0.0.0.0"
location = "host1"
client_port = 5000
engine_port = 5001
scheme = "lru"
hwm = 0
db = "memory"
engine_timeout = 10

[mpi]
mpiexec = "/opt/mpi/bin/mpiexec"
args = ["--oversubscribe", "-x", "PATH"]
"""


def write(profile: Path, text: str) -> Path:
    path = profile / CONFIG_FILE
    path.write_text(text)
    return path


def refused(profile: Path, text: str) -> str:
    """The message of the ClusterError that loading ``text`` raises."""
    write(profile, text)
    with pytest.raises(ClusterError) as info:
        load_config(profile)
    message = str(info.value)
    assert str(profile / CONFIG_FILE) in message
    return message


def test_defaults_without_a_file(tmp_path):
    config = load_config(tmp_path)
    assert config == ClusterConfig()
    assert config.n is None and config.engines == "local" and config.timeout == 30.0
    assert config.controller == {} and config.mpiexec == "mpiexec" and config.mpi_args == ()
    assert config.path is None
    assert config.controller_args() == []
    assert load_config(tmp_path / "no_such_profile") == ClusterConfig()


def test_an_empty_file_gives_the_defaults_and_its_path(tmp_path):
    path = write(tmp_path, "# nothing yet\n")
    assert load_config(tmp_path) == ClusterConfig(path=path)


def test_a_full_file_is_read_back(tmp_path):
    path = write(tmp_path, FULL)
    config = load_config(tmp_path)
    assert config == ClusterConfig(
        n=4, engines="mpi", timeout=12.0,
        controller={"ip": "0.0.0.0", "location": "host1", "client_port": 5000,
                    "engine_port": 5001, "scheme": "lru", "hwm": 0, "db": "memory",
                    "engine_timeout": 10},
        mpiexec="/opt/mpi/bin/mpiexec", mpi_args=("--oversubscribe", "-x", "PATH"),
        path=path,
    )
    assert isinstance(config.timeout, float)
    with pytest.raises(FrozenInstanceError):
        config.n = 2
    hash(config)  # frozen, so hashable, the controller dict aside


def test_only_the_controller_keys_given_are_kept(tmp_path):
    write(tmp_path, '[controller]\nscheme = "twobin"\n')
    assert load_config(tmp_path).controller == {"scheme": "twobin"}


def test_a_syntax_error_carries_the_parsers_message(tmp_path):
    message = refused(tmp_path, "[cluster]\nn = = 4\n")
    assert "not valid TOML" in message and "line 2" in message


def test_a_file_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / CONFIG_FILE).mkdir()
    with pytest.raises(ClusterError, match="cannot read") as info:
        load_config(tmp_path)
    assert str(tmp_path / CONFIG_FILE) in str(info.value)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / CONFIG_FILE).write_bytes(b"[cluster]\nengines = \"\xff\"\n")
    with pytest.raises(ClusterError, match="not UTF-8") as info:
        load_config(tmp_path)
    assert str(tmp_path / CONFIG_FILE) in str(info.value)


def test_an_unknown_section_is_refused_with_the_known_ones(tmp_path):
    message = refused(tmp_path, "[engine]\nn = 2\n")
    assert "unknown section [engine]" in message
    assert "[cluster], [controller], [mpi]" in message


def test_a_key_outside_any_section_is_refused(tmp_path):
    message = refused(tmp_path, "n = 2\n")
    assert "unknown key n outside any section" in message


def test_a_section_that_is_not_a_table_is_refused(tmp_path):
    message = refused(tmp_path, 'cluster = "big"\n')
    assert "cluster must be a section" in message


@pytest.mark.parametrize("section, key, known", [
    ("cluster", "engine", "n, engines, timeout, controller, controller_host, restart_engines, "
                          "engine_memory_limit"),
    ("controller", "port", "ip, location, client_port, engine_port, client_channel_port, "
                           "engine_channel_port, data_port, status_port, status_ip, scheme, hwm, db, "
                           "engine_timeout"),
    ("mpi", "mpirun", "mpiexec, args"),
])
def test_an_unknown_key_is_refused_with_the_known_ones(tmp_path, section, key, known):
    message = refused(tmp_path, f"[{section}]\n{key} = 1\n")
    assert f"unknown key [{section}] {key}" in message
    assert known in message


@pytest.mark.parametrize("section, key, value, wanted", [
    ("cluster", "n", '"four"', "an int >= 1, not 'four'"),
    ("cluster", "n", "0", "an int >= 1, not 0"),
    ("cluster", "n", "2.0", "an int >= 1, not 2.0"),
    ("cluster", "n", "true", "an int >= 1, not True (a bool)"),
    ("cluster", "engines", '"condor"', "one of local, mpi, ssh, slurm, sge, pbs, lsf, not 'condor'"),
    ("cluster", "timeout", "0", "a number > 0, not 0"),
    ("cluster", "timeout", "-1.5", "a number > 0, not -1.5"),
    ("cluster", "timeout", "inf", "a number > 0, not inf"),
    ("cluster", "timeout", '"30"', "a number > 0, not '30'"),
    ("cluster", "timeout", "false", "a number > 0, not False (a bool)"),
    ("controller", "ip", "127", "a non-empty string, not 127"),
    ("controller", "location", '""', "a non-empty string, not ''"),
    ("controller", "client_port", "65536", "an int from 0 to 65535, not 65536"),
    ("controller", "engine_port", "-1", "an int from 0 to 65535, not -1"),
    ("controller", "scheme", '"random"', "one of fifo, lru, plainrandom, twobin, leastload, "
                                         "weighted, or MODULE:NAME (a scheme of one's own), "
                                         "not 'random'"),
    ("controller", "hwm", "-1", "an int >= 0, not -1"),
    ("controller", "hwm", "true", "an int >= 0, not True (a bool)"),
    ("controller", "db", '"mongodb"', "one of sqlite, memory, none, not 'mongodb'"),
    ("controller", "engine_timeout", "2", "an int >= 3, not 2"),
    ("mpi", "mpiexec", "[]", "a non-empty string, not []"),
    ("mpi", "args", '"--oversubscribe"', "a list of strings, not '--oversubscribe'"),
    ("mpi", "args", '["-n", 4]', "a list of strings, not ['-n', 4]"),
    ("cluster", "controller", '"moon"', "one of local, ssh, slurm, not 'moon'"),
    ("cluster", "controller_host", '""', "a non-empty string, not ''"),
    ("ssh", "tunnel", '"yes"', "true or false, not 'yes'"),
])
def test_a_bad_value_is_refused_naming_the_file_section_and_key(
    tmp_path, section, key, value, wanted
):
    message = refused(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert message == f"{tmp_path / CONFIG_FILE}: [{section}] {key} must be {wanted}"


def test_overrides_replace_only_the_flags_given(tmp_path):
    write(tmp_path, FULL)
    config = load_config(tmp_path)
    same = config.with_overrides(n=None, engines=None, ip=None, mpi_args=None)
    assert same == config
    changed = config.with_overrides(n=8, timeout=5, scheme="fifo", hwm=None, mpi_args=["-v"])
    assert changed.n == 8 and changed.timeout == 5.0 and isinstance(changed.timeout, float)
    assert changed.mpi_args == ("-v",)
    assert changed.controller == {**config.controller, "scheme": "fifo"}
    assert (changed.engines, changed.mpiexec, changed.path) == ("mpi", config.mpiexec,
                                                               config.path)
    assert config.n == 4 and config.controller["scheme"] == "lru"  # the original is kept


def test_overrides_add_controller_keys_to_the_defaults():
    config = ClusterConfig().with_overrides(client_port=5000, ip="0.0.0.0", mpiexec="srun")
    assert config.controller == {"client_port": 5000, "ip": "0.0.0.0"}
    assert config.mpiexec == "srun" and config.engines == "local"


@pytest.mark.parametrize("flags, message", [
    ({"n": 0}, "option n must be an int >= 1, not 0"),
    ({"n": True}, "option n must be an int >= 1, not True (a bool)"),
    ({"engines": "condor"}, "option engines must be one of local, mpi, ssh, slurm, sge, pbs, lsf, not 'condor'"),
    ({"timeout": -1}, "option timeout must be a number > 0, not -1"),
    ({"engine_timeout": 1}, "option engine_timeout must be an int >= 3, not 1"),
    ({"client_port": "5000"}, "option client_port must be an int from 0 to 65535, not '5000'"),
    ({"mpi_args": "-v"}, "option mpi_args must be a list of strings, not '-v'"),
])
def test_overrides_are_checked_as_in_the_file(flags, message):
    with pytest.raises(ClusterError) as info:
        ClusterConfig().with_overrides(**flags)
    assert str(info.value) == message


def test_an_unknown_override_is_a_type_error():
    with pytest.raises(TypeError, match="unknown flags: port"):
        ClusterConfig().with_overrides(port=5000)


def test_controller_args_in_a_stable_order_with_dashes(tmp_path):
    write(tmp_path, FULL)
    assert load_config(tmp_path).controller_args() == [
        "--ip=0.0.0.0", "--location=host1", "--client-port=5000", "--engine-port=5001",
        "--scheme=lru", "--hwm=0", "--db=memory", "--engine-timeout=10",
    ]
    given_backwards = ClusterConfig(controller={"client_port": 5000, "ip": "0.0.0.0"})
    assert given_backwards.controller_args() == ["--ip=0.0.0.0", "--client-port=5000"]


def test_a_controller_on_another_host_is_read_back(tmp_path):
    from plait.cluster.config import controller_options

    write(tmp_path, '[cluster]\ncontroller = "ssh"\ncontroller_host = "me@head"\n'
                    '[ssh]\ntunnel = true\n')
    config = load_config(tmp_path)
    assert controller_options(config) == {"controller": "ssh", "controller_host": "me@head",
                                          "tunnel": True, "restart_engines": False,
                                          "engine_memory_limit": None,
                                          "restart_controller": True, "engine_reconnect": 60.0}
    assert controller_options(config.with_overrides(tunnel=False))["tunnel"] is False
    assert controller_options(ClusterConfig()) == {"controller": "local",
                                                   "controller_host": None, "tunnel": False,
                                                   "restart_engines": False,
                                                   "engine_memory_limit": None,
                                                   "restart_controller": True,
                                                   "engine_reconnect": 60.0}
