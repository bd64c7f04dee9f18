"""Start and stop the local Apache Kafka: one KRaft node, or a local cluster of several, on 127.0.0.1.

    python -m infra.broker start             # one node (broker + controller), waits until it answers, creates topics
    python -m infra.broker start --nodes 3   # three nodes, one controller quorum, topics with 3 replicas
    python -m infra.broker status
    python -m infra.broker stop

Kafka runs from the jars `make jars` fetched from Maven Central (`infra/maven/kafka/pom.xml`):
`java -cp .jars/kafka/* kafka.Kafka server.properties`, each node a combined broker and controller
(KRaft, no ZooKeeper), its storage formatted once with `kafka.tools.StorageTool format` for a dynamic
controller quorum (`controller.quorum.bootstrap.servers`; never `controller.quorum.voters`).

**Ports are one fact**: node i listens for clients on the i-th address of `RECSYS_KAFKA_BOOTSTRAP`
(which must be on 127.0.0.1 for a local broker); a node beyond the listed addresses takes the next
port after the last one. Controllers listen on `RECSYS_KAFKA_CONTROLLER_PORT` + i, or, when that is
0, on the ports right after the client ports (9093 for the default 127.0.0.1:9092).

Each node's files live in `<state_dir>/broker/node-<id>/` (config, data, logs, PID file); the
cluster's layout (id, nodes, ports) in `<state_dir>/broker/cluster.json`, so a restart reuses the
formatted storage. Nodes are tracked by PID file and checked against /proc/<pid>/cmdline (a recycled
PID is never taken for a node); never looked up or killed by name. `stop` sends SIGTERM and waits for
Kafka's controlled shutdown. With `RECSYS_KAFKA_BOOTSTRAP` pointing at a real cluster, skip this
script: nothing else changes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, cast

import typer

from infra import jars
from infra.daemon import Daemon, stop_all, tails, wait_gone, wait_port_free
from infra.daemon import free_port as free_port  # re-exported: tests and benchmarks take ports from here
from infra.daemon import free_ports as free_ports
from recsys.io.kafka import BrokerUnavailable, bootstrap, ensure_topics, wait_for_broker
from recsys.settings import Settings, get_settings

app = typer.Typer(
    help="The local Apache Kafka (KRaft) on 127.0.0.1.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MAIN_CLASS = "kafka.Kafka"
HEAP = "512m"  # per node; the machine is shared with Spark and the services
LOOPBACK = {"127.0.0.1", "localhost"}


class BrokerConfigError(ValueError):
    """The settings do not describe a local broker we can run (ports disagree, a remote bootstrap, ...)."""


# --- layout: which node listens where ----------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    node_id: int
    port: int  # clients (PLAINTEXT)
    controller_port: int  # the KRaft quorum (CONTROLLER)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def layout(s: Settings, nodes: int | None = None) -> list[Node]:
    """The local nodes the settings describe: node i on the i-th bootstrap address (then the next ports).

    Raises BrokerConfigError when the bootstrap is not on this machine.
    """
    addresses = bootstrap(s)
    ports = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        if host not in LOOPBACK or not port.isdigit():
            raise BrokerConfigError(
                f"RECSYS_KAFKA_BOOTSTRAP={s.kafka_bootstrap} names {address}, not a port on 127.0.0.1: that is a "
                "Kafka cluster elsewhere, which needs no local broker (or set it to 127.0.0.1:<port>)"
            )
        ports.append(int(port))
    n = nodes or len(ports)
    if n < len(ports):
        raise BrokerConfigError(f"RECSYS_KAFKA_BOOTSTRAP lists {len(ports)} addresses, more than the {n} nodes asked")
    while len(ports) < n:
        ports.append(ports[-1] + 1)
    first_controller = s.kafka_controller_port or max(ports) + 1
    controllers = [first_controller + i for i in range(n)]
    clash = set(ports) & set(controllers)
    if len(set(ports)) < n or clash:
        raise BrokerConfigError(
            f"client ports {ports} and controller ports {controllers} overlap: set "
            "RECSYS_KAFKA_CONTROLLER_PORT to a free range"
        )
    return [Node(i + 1, port, controller) for i, (port, controller) in enumerate(zip(ports, controllers, strict=True))]


def check_no_stale_port(s: Settings, environ: dict[str, str] | None = None) -> None:
    """Refuse a RECSYS_BROKER_PORT (the setting the bootstrap's port replaced) that names another port.

    It used to be a second, separate fact: with the bootstrap at 19092 and the port left at 9092, the
    broker started on 9092 and every client then looked for it on 19092.
    """
    stale = (os.environ if environ is None else environ).get("RECSYS_BROKER_PORT")
    port = layout(s)[0].port
    if stale is not None and stale.strip() != str(port):
        raise BrokerConfigError(
            f"RECSYS_BROKER_PORT={stale} disagrees with RECSYS_KAFKA_BOOTSTRAP={s.kafka_bootstrap}: the local Kafka "
            f"listens on the bootstrap's port ({port}); unset RECSYS_BROKER_PORT, which is no longer read"
        )


def cluster_bootstrap(nodes: list[Node]) -> str:
    return ",".join(n.address for n in nodes)


# --- files -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BrokerPaths:
    root: Path  # <state_dir>/broker

    @property
    def layout_file(self) -> Path:
        return self.root / "cluster.json"

    def node(self, node_id: int) -> NodePaths:
        return NodePaths(self.root / f"node-{node_id}")


@dataclass(frozen=True)
class NodePaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def log_config(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def console_log(self) -> Path:
        return self.root / "console.log"  # the JVM's stdout/stderr (crashes); Kafka's own log is logs/server.log


def server_properties(node: Node, nodes: list[Node], data: Path) -> str:
    """One combined broker + controller node; everything on 127.0.0.1."""
    n = len(nodes)
    replicas = min(n, 3)
    min_isr = 2 if replicas >= 3 else 1
    settings = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        # A dynamic quorum (KIP-853): the controllers are found through these, the voters are in the formatted log.
        "controller.quorum.bootstrap.servers": ",".join(f"127.0.0.1:{m.controller_port}" for m in nodes),
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        # Topics come from recsys.protocol.topic_specs (ensure_topics), never from a client's typo.
        "auto.create.topics.enable": "false",
        "num.partitions": 1,
        # Internal topics: as many replicas as there are nodes (one node: 1), and on a cluster writes need two
        # in-sync replicas, so an acknowledged write survives the loss of any one node.
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        # No waiting for more members before the first rebalance (tests and the demo start one consumer at a time).
        "group.initial.rebalance.delay.ms": 0,
        # A replica that was not in sync never becomes leader: no acknowledged write is lost on failover.
        "unclean.leader.election.enable": "false",
        # Small machine: fewer threads than the defaults sized for servers.
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 2,
        "log.cleaner.threads": 1,
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        # Fewer no-op records in the metadata log when nothing happens (default 500 ms): idle CPU.
        "metadata.max.idle.interval.ms": 2500,
    }
    return "".join(f"{k}={v}\n" for k, v in settings.items())


def log4j2_properties(logs: Path) -> str:
    """Kafka's log (SLF4J 1.x -> log4j-slf4j-impl -> Log4j 2) into a size-capped rolling file."""
    return f"""\
status = warn
name = recsys-kafka
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# Per-request and state-change chatter stays out unless something is wrong.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
"""


def kafka_uuid() -> str:
    """A Kafka Uuid in its string form (URL-safe base64, no padding), never starting with '-' (as Kafka's own)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    found = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not found:
        raise FileNotFoundError(
            "java not found: Kafka needs a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"
        )
    return found


def _classpath() -> str:
    jars.jars("kafka")  # raises JarsMissing with "run `make jars`" if they are not fetched
    return str(jars.folder("kafka") / "*")  # the JVM expands the wildcard: a short, readable command line


def _jvm(paths: NodePaths, heap: str = HEAP) -> list[str]:
    return [
        java(),
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-XX:-UsePerfData",
        "-Djava.awt.headless=true",
        "-Djava.net.preferIPv4Stack=true",
        f"-Dlog4j2.configurationFile={paths.log_config}",
        f"-Dkafka.logs.dir={paths.logs}",
        "-cp",
        _classpath(),
    ]


def _prepare(paths: BrokerPaths, nodes: list[Node]) -> None:
    """Write the configs; format each node's storage the first time (one cluster id, one controller quorum)."""
    recorded = _recorded_layout(paths)
    wanted = [asdict(n) for n in nodes]
    if recorded is not None and recorded["nodes"] != wanted:
        raise BrokerConfigError(
            f"{paths.root} holds a Kafka formatted for nodes {recorded['nodes']}, not {wanted}: stop it and delete "
            "that folder (its data goes with it), or use another RECSYS_STATE_DIR"
        )
    if recorded is None:
        cluster_id = kafka_uuid()
        directories = {n.node_id: kafka_uuid() for n in nodes}
    else:
        cluster_id, directories = recorded["cluster_id"], {int(k): v for k, v in recorded["directories"].items()}
    for node in nodes:
        node_paths = paths.node(node.node_id)
        node_paths.logs.mkdir(parents=True, exist_ok=True)
        node_paths.config.write_text(server_properties(node, nodes, node_paths.data))
        node_paths.log_config.write_text(log4j2_properties(node_paths.logs))
        if not (node_paths.data / "meta.properties").exists():
            _format(node_paths, node, nodes, cluster_id, directories)
    if recorded is None:
        paths.layout_file.write_text(
            json.dumps({"cluster_id": cluster_id, "nodes": wanted, "directories": directories}, indent=2)
        )


def _format(paths: NodePaths, node: Node, nodes: list[Node], cluster_id: str, directories: dict[int, str]) -> None:
    if len(nodes) == 1:
        quorum = ["--standalone"]  # this node is the whole controller quorum
    else:  # every node formatted with the same initial voters (id@host:port:directory id)
        quorum = [
            "--initial-controllers",
            ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}:{directories[n.node_id]}" for n in nodes),
        ]
    cmd = [
        *_jvm(paths, heap="128m"),
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(paths.config),
        *quorum,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise BrokerUnavailable(f"formatting {paths.data} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def _recorded_layout(paths: BrokerPaths) -> dict | None:
    try:
        return json.loads(paths.layout_file.read_text())
    except (FileNotFoundError, ValueError):
        return None


# --- processes ---------------------------------------------------------------------------------------------
def node_daemon(paths: NodePaths) -> Daemon:
    """A node's JVM: Kafka's main class on this node's own config file (a recycled PID belongs to another
    program)."""
    return Daemon(paths.root.name, paths.pid_file, paths.console_log, marks=(MAIN_CLASS, str(paths.config)))


def node_pid(paths: NodePaths) -> int | None:
    """PID of this node's Kafka if the PID file names a live process that is it, else None."""
    return node_daemon(paths).pid()


def running_pids(s: Settings | None = None) -> dict[int, int | None]:
    """Node id -> PID (None when that node is not running), for the layout recorded in the state folder."""
    paths = BrokerPaths((s or get_settings()).broker_dir)
    recorded = _recorded_layout(paths)
    ids = [n["node_id"] for n in recorded["nodes"]] if recorded else []
    return {i: node_pid(paths.node(i)) for i in ids}


def running_pid(s: Settings | None = None) -> int | None:
    """PID of node 1 (the single node of the default set-up), or None."""
    return running_pids(s).get(1)


def start(settings: Settings | None = None, nodes: int | None = None, timeout_s: float = 180.0) -> int:
    """Start every node that is not running, wait until each answers metadata requests and every node is
    registered, then create the topics (one replica per node, at most 3). Returns node 1's PID."""
    s = settings or get_settings()
    layout_ = layout(s, nodes)
    paths = BrokerPaths(s.broker_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    pids = {node.node_id: node_pid(paths.node(node.node_id)) for node in layout_}
    for node in layout_:
        if pids[node.node_id] is None:
            _check_ports_free(node)
    _prepare(paths, layout_)
    for node in layout_:
        if pids[node.node_id] is None:
            pids[node.node_id] = _spawn(paths.node(node.node_id))
    running = cast("dict[int, int]", pids)  # every node has a PID now
    everyone = s.model_copy(update={"kafka_bootstrap": cluster_bootstrap(layout_)})
    deadline = time.monotonic() + timeout_s
    try:
        for node in layout_:
            address = s.model_copy(update={"kafka_bootstrap": node.address})
            _wait_answers(address, paths.node(node.node_id), deadline)
        _wait_registered(everyone, len(layout_), deadline)
    except BrokerUnavailable as e:
        raise BrokerUnavailable(f"{e}\n{_tails(paths, layout_)}") from None
    ensure_topics(everyone.model_copy(update={"kafka_replication_factor": min(len(layout_), 3)}))
    return running[1]


def _wait_answers(s: Settings, paths: NodePaths, deadline: float) -> None:
    """Until the node answers a metadata request; fails at once if its process is gone."""
    while True:
        # By PID, not node_pid(): right after exec the kernel may not show the new command line yet.
        if not node_daemon(paths).spawned_alive():
            raise BrokerUnavailable(f"Kafka ({paths.root.name}) exited during start-up")
        try:
            wait_for_broker(s, timeout_s=min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise


def _wait_registered(s: Settings, n: int, deadline: float) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    seen = 0
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap(s), request_timeout_ms=5000)
            try:
                seen = len(admin.describe_cluster()["brokers"])
            finally:
                admin.close()
            if seen >= n:
                return
        except (OSError, KafkaError):
            pass
        time.sleep(0.5)
    raise BrokerUnavailable(f"only {seen} of {n} Kafka nodes registered in time")


def _check_ports_free(node: Node) -> None:
    for port in (node.port, node.controller_port):
        if not wait_port_free(port):  # a node that just stopped may take a moment to let go of its port
            raise BrokerUnavailable(
                f"port {port} on 127.0.0.1 is taken by another program; stop it, or point RECSYS_KAFKA_BOOTSTRAP "
                "(client ports) and RECSYS_KAFKA_CONTROLLER_PORT (controller ports) at free ones"
            )


def _spawn(paths: NodePaths) -> int:
    return node_daemon(paths).spawn([*_jvm(paths), MAIN_CLASS, str(paths.config)])


def _tails(paths: BrokerPaths, nodes: list[Node]) -> str:
    return tails(
        f
        for node in nodes
        for f in (paths.node(node.node_id).console_log, paths.node(node.node_id).logs / "server.log")
    )


def kill_node(s: Settings, node_id: int) -> int:
    """SIGKILL one node (fault tests): no controlled shutdown, no flush. Returns the PID killed."""
    paths = BrokerPaths(s.broker_dir).node(node_id)
    pid = node_pid(paths)
    if pid is None:
        raise ProcessLookupError(f"Kafka node {node_id} is not running")
    os.kill(pid, signal.SIGKILL)
    wait_gone([pid], 30)
    return pid


LAST_NODE_STOP_S = 10.0  # the last node of several: no controller quorum left for its controlled shutdown


def stop(settings: Settings | None = None, timeout_s: float = 120.0) -> bool:
    """Stop every node: SIGTERM (Kafka's controlled shutdown: leadership moved away, logs flushed and closed
    cleanly), and SIGKILL only a node still there after `timeout_s`. Returns whether any was running."""
    s = settings or get_settings()
    paths = BrokerPaths(s.broker_dir)
    ids = running_pids(s)
    if len(ids) == 1:
        return stop_all([node_daemon(paths.node(i)) for i in ids], timeout_s)
    # Every node is also a controller, and a controlled shutdown needs the controllers' quorum: stopped all at
    # once, the last ones to go lose it and wait out the whole timeout (seen: 120 s). One at a time, each goes
    # while the others still hold the quorum; the last one left never can, so it gets a short wait.
    running = [i for i, pid in ids.items() if pid is not None]
    for n, i in enumerate(running):
        last = n == len(running) - 1
        stop_all([node_daemon(paths.node(i))], min(timeout_s, LAST_NODE_STOP_S) if last else timeout_s)
    stop_all([node_daemon(paths.node(i)) for i in ids], timeout_s)  # PID files of nodes already gone
    return bool(running)


# --- command line --------------------------------------------------------------------------------------------
@app.command("start")
def start_cmd(
    nodes: Annotated[int | None, typer.Option(help="Nodes (default: one per RECSYS_KAFKA_BOOTSTRAP address).")] = None,
) -> None:
    """Start Kafka on 127.0.0.1 and create the topics."""
    s = get_settings()
    try:
        check_no_stale_port(s)
        layout_ = layout(s, nodes)
        pid = start(s, nodes)
    except (BrokerUnavailable, BrokerConfigError, FileNotFoundError, jars.JarsMissing) as e:
        typer.secho(f"Kafka did not start: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    paths = BrokerPaths(s.broker_dir)
    if len(layout_) == 1:
        typer.echo(f"Kafka up: pid {pid}, bootstrap {s.kafka_bootstrap}, data in {paths.node(1).data}")
        return
    typer.echo(f"Kafka cluster up: {len(layout_)} nodes, pids {list(running_pids(s).values())}, files in {paths.root}")
    typer.echo(
        f"export RECSYS_KAFKA_BOOTSTRAP={cluster_bootstrap(layout_)} "
        f"RECSYS_KAFKA_REPLICATION_FACTOR={min(len(layout_), 3)}"
    )


@app.command("stop")
def stop_cmd() -> None:
    """Stop the nodes started by `start` (data is kept)."""
    typer.echo("Kafka stopped" if stop() else "Kafka was not running")


@app.command("status")
def status_cmd() -> None:
    """Say which nodes run."""
    pids = running_pids(get_settings())
    if not pids:
        typer.echo("Kafka not running (never started in this state folder)")
        raise typer.Exit(3)
    for node_id, pid in pids.items():
        typer.echo(f"node {node_id}: " + (f"running, pid {pid}" if pid else "not running"))
    raise typer.Exit(0 if all(pids.values()) else 3)


if __name__ == "__main__":
    app()
