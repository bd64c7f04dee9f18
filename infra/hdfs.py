"""Start and stop the local HDFS: one NameNode and one DataNode on 127.0.0.1.

    python -m infra.hdfs start    # formats the NameNode the first time, waits until a DataNode is live
    python -m infra.hdfs status
    python -m infra.hdfs stop

HDFS runs from the jars `make jars` fetched from Maven Central (`infra/maven/hdfs/pom.xml`, Hadoop
3.5.0, the release of PySpark's Hadoop client): two JVMs, `java -cp <conf>:.jars/hdfs/*
org.apache.hadoop.hdfs.server.namenode.NameNode` and `...datanode.DataNode`, which read
`core-site.xml` and `hdfs-site.xml` from the conf folder at the head of their classpath (as Hadoop's
own scripts put $HADOOP_CONF_DIR there). The NameNode is formatted once (`-format -nonInteractive`);
a restart reuses its namespace and the DataNode's blocks.

**Ports**: the NameNode's RPC port is `RECSYS_HDFS_PORT` (clients use `hdfs://127.0.0.1:<port>/`),
its web UI and JMX are on the next port. The DataNode's three ports (data transfer, IPC, HTTP) are
chosen by the kernel at each start (port 0): it registers them with the NameNode, which hands them
to clients, so nobody needs to know them. Everything binds to 127.0.0.1.

Replication is 1 (one DataNode), permissions are off (one user, on one machine), and safe mode ends
as soon as the blocks are reported (no extension, no minimum of DataNodes). A client keeps its own
replication default: Spark is given `spark.hadoop.dfs.replication` from RECSYS_HDFS_REPLICATION
(`recsys.io.spark`; else its parquet files ask for 3 replicas and their blocks stay under-replicated for
good; Delta's log files, written through Hadoop's FileContext, take the server's default); delta-rs
(hdfs-native) takes the server's default.

Everything lives in `<state_dir>/hdfs/`: conf/, name/ (the namespace), data/ (the blocks), logs/,
and one PID file per daemon. Daemons are tracked by PID file and checked against
/proc/<pid>/cmdline (a recycled PID is never taken for one); never looked up or killed by name.
`stop` sends SIGTERM, and SIGKILL only after a timeout.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import typer

from infra import jars
from infra.broker import java
from infra.daemon import Daemon, alive, port_taken, stop_all, tails, wait_port_free
from recsys.settings import Settings, get_settings

app = typer.Typer(
    help="The local HDFS (one NameNode, one DataNode) on 127.0.0.1.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

HOST = "127.0.0.1"
HEAP = "256m"  # per daemon: an empty-ish namespace and a handful of blocks; the machine is shared
NAMENODE = "namenode"
DATANODE = "datanode"
MAIN_CLASSES = {
    NAMENODE: "org.apache.hadoop.hdfs.server.namenode.NameNode",
    DATANODE: "org.apache.hadoop.hdfs.server.datanode.DataNode",
}


class HdfsUnavailable(RuntimeError):
    """The local HDFS did not start, or its folder cannot be used."""


def url(s: Settings, path: str = "/") -> str:
    """`hdfs://127.0.0.1:<port>/path` on the local NameNode."""
    return f"hdfs://{HOST}:{s.hdfs_port}/{path.lstrip('/')}"


def http_port(s: Settings) -> int:
    """The NameNode's web UI, JMX and WebHDFS: the port after its RPC port."""
    return s.hdfs_port + 1


# --- files -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HdfsPaths:
    root: Path  # <state_dir>/hdfs

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def name(self) -> Path:
        return self.root / "name"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def pid_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"

    def console_log(self, daemon: str) -> Path:
        return self.logs / f"{daemon}.out"  # the JVM's stdout/stderr (crashes); Hadoop's own log is <daemon>.log

    def log(self, daemon: str) -> Path:
        return self.logs / f"{daemon}.log"

    @property
    def formatted(self) -> bool:
        return (self.name / "current" / "VERSION").exists()


def _xml(properties: dict[str, object]) -> str:
    body = "".join(
        f"  <property><name>{escape(k)}</name><value>{escape(str(v))}</value></property>\n"
        for k, v in properties.items()
    )
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<configuration>\n{body}</configuration>\n'


def core_site(s: Settings, paths: HdfsPaths) -> str:
    return _xml(
        {
            "fs.defaultFS": url(s),
            "hadoop.tmp.dir": paths.root / "tmp",
            # The web servers sign their cookies with a random secret per start, not one read from $HOME.
            "hadoop.http.authentication.signer.secret.provider": "random",
        }
    )


def hdfs_site(s: Settings, paths: HdfsPaths) -> str:
    any_port = f"{HOST}:0"  # the kernel picks a free port on 127.0.0.1; the NameNode tells clients which
    return _xml(
        {
            "dfs.namenode.name.dir": paths.name.as_uri(),
            "dfs.datanode.data.dir": paths.data.as_uri(),
            "dfs.namenode.rpc-address": f"{HOST}:{s.hdfs_port}",
            "dfs.namenode.http-address": f"{HOST}:{http_port(s)}",
            "dfs.namenode.https-address": any_port,  # unused (HTTP only), but never on 0.0.0.0
            "dfs.namenode.secondary.http-address": any_port,  # no secondary NameNode runs; same reason
            "dfs.namenode.secondary.https-address": any_port,
            "dfs.datanode.address": any_port,
            "dfs.datanode.ipc.address": any_port,
            "dfs.datanode.http.address": any_port,
            "dfs.datanode.https.address": any_port,
            "dfs.replication": 1,
            "dfs.permissions.enabled": "false",
            # Out of safe mode as soon as the reported blocks allow it: no 30 s extension, no DataNode minimum.
            "dfs.namenode.safemode.extension": 0,
            "dfs.namenode.safemode.min.datanodes": 0,
            # 127.0.0.1 may not resolve back to a name the NameNode accepts on every machine.
            "dfs.namenode.datanode.registration.ip-hostname-check": "false",
            # Small machine: fewer server threads than the defaults sized for clusters.
            "dfs.namenode.handler.count": 4,
            "dfs.namenode.service.handler.count": 2,
            "dfs.datanode.handler.count": 2,
            "dfs.datanode.max.transfer.threads": 256,
        }
    )


def log4j_properties(paths: HdfsPaths) -> str:
    """Hadoop logs through SLF4J 1.7 -> reload4j (Log4j 1.2): one size-capped rolling file per daemon."""
    return f"""\
log4j.rootLogger=INFO,RFA
log4j.appender.RFA=org.apache.log4j.RollingFileAppender
log4j.appender.RFA.File={paths.logs}/${{hdfs.daemon}}.log
log4j.appender.RFA.MaxFileSize=20MB
log4j.appender.RFA.MaxBackupIndex=3
log4j.appender.RFA.layout=org.apache.log4j.PatternLayout
log4j.appender.RFA.layout.ConversionPattern=%d{{ISO8601}} %p %c: %m%n
# Per-call chatter stays out unless something is wrong.
log4j.logger.org.apache.hadoop.hdfs.StateChange=WARN
log4j.logger.org.apache.hadoop.hdfs.server.namenode.FSNamesystem.audit=WARN
log4j.logger.org.apache.hadoop.hdfs.server.datanode.DataNode.clienttrace=WARN
log4j.logger.BlockStateChange=WARN
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
"""


def _prepare(s: Settings, paths: HdfsPaths) -> None:
    """Write the configuration; format the NameNode the first time."""
    paths.conf.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    (paths.conf / "core-site.xml").write_text(core_site(s, paths))
    (paths.conf / "hdfs-site.xml").write_text(hdfs_site(s, paths))
    (paths.conf / "log4j.properties").write_text(log4j_properties(paths))
    if paths.formatted:
        return
    if paths.data.exists() and any(paths.data.iterdir()):
        raise HdfsUnavailable(
            f"{paths.data} holds DataNode blocks but {paths.name} holds no namespace (it was deleted?): those "
            f"blocks belong to no file any more; delete {paths.root} whole, or use another RECSYS_STATE_DIR"
        )
    cmd = [*_jvm(paths, NAMENODE), MAIN_CLASSES[NAMENODE], "-format", "-nonInteractive"]
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not paths.formatted:
        raise HdfsUnavailable(
            f"formatting {paths.name} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}\n{_tails(paths)}"
        )


def _classpath(paths: HdfsPaths) -> str:
    jars.jars("hdfs")  # raises JarsMissing with "run `make jars`" if they are not fetched
    # The conf folder first (Configuration loads core-site.xml and hdfs-site.xml from the classpath), then the
    # jars; the JVM expands the wildcard: a short, readable command line.
    return f"{paths.conf}:{jars.folder('hdfs') / '*'}"


def _jvm(paths: HdfsPaths, daemon: str, heap: str = HEAP) -> list[str]:
    return [
        java(),
        f"-Xms{heap}",
        f"-Xmx{heap}",
        # One GC thread, no pauses worth a concurrent collector at this heap size; no perf-data file in /tmp.
        "-XX:+UseSerialGC",
        "-XX:-UsePerfData",
        "-Djava.awt.headless=true",
        "-Djava.net.preferIPv4Stack=true",
        # Names this state folder on the command line (how node_pid recognises our daemons), and stops
        # Hadoop's Shell from looking for $HADOOP_HOME.
        f"-Dhadoop.home.dir={paths.root}",
        f"-Dhadoop.log.dir={paths.logs}",
        f"-Dhdfs.daemon={daemon}",
        f"-Dlog4j.configuration={(paths.conf / 'log4j.properties').as_uri()}",
        "-cp",
        _classpath(paths),
    ]


# --- processes ---------------------------------------------------------------------------------------------
def hdfs_daemon(paths: HdfsPaths, daemon: str) -> Daemon:
    """One HDFS daemon: its main class with this state folder's hadoop.home.dir on its command line (a
    recycled PID belongs to another program)."""
    return Daemon(
        daemon,
        paths.pid_file(daemon),
        paths.console_log(daemon),
        marks=(MAIN_CLASSES[daemon], f"-Dhadoop.home.dir={paths.root}"),
    )


def daemon_pid(paths: HdfsPaths, daemon: str) -> int | None:
    """PID of this state folder's `daemon` if its PID file names a live process that is it, else None."""
    return hdfs_daemon(paths, daemon).pid()


def running_pids(s: Settings | None = None) -> dict[str, int | None]:
    """Daemon -> PID (None when it is not running)."""
    paths = HdfsPaths((s or get_settings()).hdfs_dir)
    return {daemon: daemon_pid(paths, daemon) for daemon in MAIN_CLASSES}


def start(settings: Settings | None = None, timeout_s: float = 120.0) -> dict[str, int]:
    """Start whichever daemon is not running and wait until a client can use HDFS: the NameNode out of safe
    mode with a live DataNode that has reported its storage. Returns the PIDs."""
    s = settings or get_settings()
    paths = HdfsPaths(s.hdfs_dir)
    pids = running_pids(s)
    if pids[NAMENODE] is None:
        for port in (s.hdfs_port, http_port(s)):
            _check_port_free(port)
    _prepare(s, paths)
    for daemon in MAIN_CLASSES:  # the NameNode first: the DataNode retries its registration until it answers
        if pids[daemon] is None:
            pids[daemon] = hdfs_daemon(paths, daemon).spawn([*_jvm(paths, daemon), MAIN_CLASSES[daemon]])
    running = {daemon: pid for daemon, pid in pids.items() if pid is not None}
    try:
        wait_ready(s, running, timeout_s)
    except HdfsUnavailable as e:
        raise HdfsUnavailable(f"{e}\n{_tails(paths)}") from None
    return running


def _jmx_bean(s: Settings, name: str, timeout_s: float) -> dict:
    query = f"http://{HOST}:{http_port(s)}/jmx?qry=Hadoop:service=NameNode,name={name}"
    with urllib.request.urlopen(query, timeout=timeout_s) as r:
        beans = json.loads(r.read())["beans"]
    if not beans:
        raise HdfsUnavailable("the NameNode's namesystem is not loaded yet")
    return beans[0]


def namenode_state(s: Settings, timeout_s: float = 2.0) -> dict:
    """The NameNode's FSNamesystemState bean (NumLiveDataNodes, CapacityRemaining, FSState, ...) from its JMX."""
    return _jmx_bean(s, "FSNamesystemState", timeout_s)


def reachable_datanodes(s: Settings, timeout_s: float = 2.0) -> int:
    """How many DataNodes the NameNode counts as live whose data port accepts a connection now.

    The NameNode keeps counting a killed DataNode as live until its heartbeats expire (minutes); a restarted
    one listens on a new port once it has registered again. Clients are sent to the registered address."""
    live = json.loads(_jmx_bean(s, "NameNodeInfo", timeout_s)["LiveNodes"] or "{}")
    return sum(port_taken(int(node["xferaddr"].rsplit(":", 1)[1])) for node in live.values())


def wait_ready(s: Settings, pids: dict[str, int], timeout_s: float = 120.0) -> dict:
    """Until the NameNode is out of safe mode, answers on its RPC port, and counts a live DataNode with space;
    fails at once if a daemon exits. Returns the NameNode's state."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        for daemon, pid in pids.items():
            if not alive(pid):  # by PID: right after exec the kernel may not show the new command line yet
                raise HdfsUnavailable(f"the {daemon} exited during start-up")
        try:
            state = namenode_state(s)
            last = f"{state['FSState']}, {state['NumLiveDataNodes']} live DataNode(s)"
            if (
                state["FSState"] == "Operational"
                and state["CapacityRemaining"] > 0
                and port_taken(s.hdfs_port)
                and reachable_datanodes(s) >= 1
            ):
                return state
        except (OSError, ValueError, KeyError, HdfsUnavailable) as e:
            last = str(e)
        time.sleep(0.25)
    raise HdfsUnavailable(f"HDFS not ready within {timeout_s:.0f} s ({last})")


def _check_port_free(port: int) -> None:
    if not wait_port_free(port):  # a NameNode that just stopped may take a moment to let go of its port
        raise HdfsUnavailable(
            f"port {port} on 127.0.0.1 is taken by another program; stop it, or point RECSYS_HDFS_PORT at a free "
            "port whose next port is free too (the NameNode's web UI)"
        )


def _tails(paths: HdfsPaths, chars: int = 1500) -> str:
    return tails((f for daemon in MAIN_CLASSES for f in (paths.console_log(daemon), paths.log(daemon))), chars)


def stop(settings: Settings | None = None, timeout_s: float = 60.0) -> bool:
    """SIGTERM both daemons (Hadoop's shutdown hooks close the edit log and the block files), SIGKILL one still
    there after `timeout_s`. Returns whether any was running."""
    paths = HdfsPaths((settings or get_settings()).hdfs_dir)
    return stop_all((hdfs_daemon(paths, daemon) for daemon in MAIN_CLASSES), timeout_s)


# --- command line --------------------------------------------------------------------------------------------
@app.command("start")
def start_cmd() -> None:
    """Start the NameNode and the DataNode on 127.0.0.1 (formatting the NameNode the first time)."""
    s = get_settings()
    try:
        pids = start(s)
    except (HdfsUnavailable, FileNotFoundError, jars.JarsMissing) as e:
        typer.secho(f"HDFS did not start: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"HDFS up: {url(s)} (NameNode pid {pids[NAMENODE]}, DataNode pid {pids[DATANODE]}), "
        f"web UI http://{HOST}:{http_port(s)}/, files in {s.hdfs_dir}"
    )


@app.command("stop")
def stop_cmd() -> None:
    """Stop the daemons started by `start` (data is kept)."""
    typer.echo("HDFS stopped" if stop() else "HDFS was not running")


@app.command("status")
def status_cmd() -> None:
    """Say which daemons run, and how many DataNodes the NameNode counts live."""
    s = get_settings()
    pids = running_pids(s)
    for daemon, pid in pids.items():
        typer.echo(f"{daemon}: " + (f"running, pid {pid}" if pid else "not running"))
    if pids[NAMENODE]:
        try:
            state = namenode_state(s)
            typer.echo(
                f"{url(s)}: {state['FSState']}, {state['NumLiveDataNodes']} live DataNode(s), "
                f"{state['FilesTotal']} files and folders, {state['BlocksTotal']} blocks"
            )
        except (OSError, ValueError, KeyError, HdfsUnavailable) as e:
            typer.echo(f"{url(s)}: no answer ({e})")
    raise typer.Exit(0 if all(pids.values()) else 3)


if __name__ == "__main__":
    app()
