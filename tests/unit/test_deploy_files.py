"""The cluster deployment files (infra/deploy/): parsed, never started here (no Docker daemon in tests).

These checks catch the mistakes that only show on a real cluster: a misspelt RECSYS_ variable that the
settings silently ignore, a port published on every interface, a secret written into the file, a
connection name the DAG does not use.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from recsys.settings import ENV_PREFIX, PROJECT_ROOT, Settings

DEPLOY = PROJECT_ROOT / "infra" / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
REQUIRED_SERVICES = {
    "kafka",
    "topics-init",
    "spark-master",
    "spark-worker",
    "postgres",
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "archiver",
    "speed-layer-1",
    "speed-layer-2",
    "serving-1",
    "serving-2",
}
SETTINGS_VARIABLES = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
# ${NAME}, ${NAME:-default}, ${NAME:?error}; `$${...}` is compose's escape for a literal `$`.
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?[^}]*\}")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]+)@")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the file's anchors and `<<` merges


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def published_ports(service: dict) -> list[tuple[str | None, str]]:
    """(host address, host port) of each published port; the address is None when none is given."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # long syntax
            out.append((port.get("host_ip"), str(port.get("published"))))
            continue
        parts = str(port).split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1]))
        else:  # "8000" or "8001:8000" bind every host interface
            out.append((None, parts[0]))
    return out


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def test_every_part_of_the_cluster_is_described(services):
    assert set(services) >= REQUIRED_SERVICES, f"missing: {sorted(REQUIRED_SERVICES - set(services))}"


def test_every_recsys_variable_set_is_a_real_setting(services):
    # Settings ignore unknown RECSYS_ variables (extra="ignore"), so a typo would silently keep a default.
    unknown = {
        f"{name}: {key}"
        for name, service in services.items()
        for key in environment(service)
        if key.startswith(ENV_PREFIX) and key not in SETTINGS_VARIABLES
    }
    assert not unknown
    example_unknown = {k for k in env_example() if k.startswith(ENV_PREFIX) and k not in SETTINGS_VARIABLES}
    assert not example_unknown, "RECSYS_ is the settings' prefix; name other .env variables otherwise"


def test_ports_are_published_on_loopback_only(services):
    wide_open = {
        f"{name}: {host or '*'}:{port}"
        for name, service in services.items()
        for host, port in published_ports(service)
        if host != "127.0.0.1"
    }
    assert not wide_open
    assert published_ports(services["serving-1"]) and published_ports(services["serving-2"])
    assert published_ports(services["kafka"])


def test_no_secret_is_written_into_the_compose_file(services):
    literal = set()
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and value and not INTERPOLATION.fullmatch(value):
                literal.add(f"{name}: {key}")
            for match in URL_PASSWORD.finditer(value):
                if not INTERPOLATION.fullmatch(match["password"]):
                    literal.add(f"{name}: password in {key}")
    assert not literal


def test_secrets_must_be_given_and_the_example_gives_none(services):
    env = environment(services["serving-1"])
    for key in ("RECSYS_SERVING_WRITE_TOKEN", "RECSYS_PSEUDONYM_KEY"):
        # `:?` makes compose refuse to start without the value instead of starting with an empty one.
        assert INTERPOLATION.fullmatch(env[key])["op"] == ":?", key
    example = env_example()
    filled = {k for k, v in example.items() if SECRET_NAME.search(k) and v}
    assert not filled, "the example must not carry secret values, not even placeholders that would work"


def test_every_variable_without_a_default_is_in_the_env_example():
    example = env_example()
    needed = {m["name"] for m in INTERPOLATION.finditer(COMPOSE.read_text()) if m["op"] != ":-"}
    assert needed <= set(example), f"add to .env.example: {sorted(needed - set(example))}"


def test_one_shot_services_are_not_restarted(services):
    # A restart policy on a one-shot would rerun it forever, and what waits for its completion never starts.
    one_shots = {
        dependency
        for service in services.values()
        if isinstance(service.get("depends_on"), dict)
        for dependency, how in service["depends_on"].items()
        if how["condition"] == "service_completed_successfully"
    }
    assert one_shots >= {"topics-init", "airflow-init"}
    assert {name: services[name].get("restart", "no") for name in one_shots} == dict.fromkeys(one_shots, "no")


def test_kafka_runs_in_kraft_mode_without_zookeeper(services):
    env = environment(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    # A dynamic quorum, as the local broker's: bootstrap servers, never static voters as well.
    assert env["KAFKA_CONTROLLER_QUORUM_BOOTSTRAP_SERVERS"] and env["CLUSTER_ID"]
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" not in env
    assert "zookeeper" not in COMPOSE.read_text().lower()
    bootstrap = {environment(s).get("RECSYS_KAFKA_BOOTSTRAP") for s in services.values()} - {None}
    assert bootstrap == {"kafka:9092"}
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_third_party_images_are_pinned(services):
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert re.match(r"\d+\.\d+", tag), f"{name}: pin {image} to a version"


def test_the_spark_connection_is_the_one_the_dag_uses_and_points_at_the_master(services):
    dag = (PROJECT_ROOT / "dags" / "recsys_nightly.py").read_text()
    conn_id = re.search(r'^SPARK_CONN_ID = "([^"]+)"', dag, re.MULTILINE)[1]
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-api-server"):
        conn = json.loads(environment(services[name])[variable])
        assert conn == {"conn_type": "spark", "host": "spark://spark-master:7077"}, name
    master = services["spark-master"]["command"]
    assert master[master.index("--port") + 1] == "7077"
    assert environment(services["airflow-scheduler"])["RECSYS_SPARK_DRIVER_HOST"] == "airflow-scheduler"


def test_airflow_keeps_authentication_on(services):
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor"):
        env = environment(services[name])
        assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False").lower() == "false", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql"), name


def test_state_is_one_volume_at_the_state_dir_in_every_project_process(services):
    # MODEL messages carry absolute model paths, and the Spark driver commits files its executors wrote.
    for name, service in services.items():
        state_dir = environment(service).get("RECSYS_STATE_DIR")
        if state_dir is None:
            continue
        assert f"state:{state_dir}" in service.get("volumes", []), name


def test_each_consumer_instance_has_its_own_static_member_id(services):
    def ids(variable: str, module: str) -> list[str]:
        return [environment(s)[variable] for s in services.values() if module in " ".join(s.get("command", []))]

    speed = ids("RECSYS_SPEED_INSTANCE_ID", "speed_layer")
    assert len(speed) == 2 and len(set(speed)) == 2
    # The archiver service and the nightly drain in the scheduler are both members of the archiver group.
    archivers = ids("RECSYS_ARCHIVER_INSTANCE_ID", "jobs.archiver") + ids("RECSYS_ARCHIVER_INSTANCE_ID", "scheduler")
    assert len(archivers) == 2 and len(set(archivers)) == 2


def test_the_image_installs_the_lock_and_has_java_for_spark():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "requirements.lock" in dockerfile and "openjdk-17-jre-headless" in dockerfile
    assert re.search(r"^USER (?!root|0\b)", dockerfile, re.MULTILINE), "run as an unprivileged user"
    # A filled-in infra/deploy/.env sits in the build context: copying the folder would bake the secrets in.
    assert not re.search(r"^COPY (\.|infra/?|infra/deploy\S*) ", dockerfile, re.MULTILINE)


def test_the_compose_kafka_is_the_local_brokers_version_with_its_settings(services):
    """The same Kafka as `make jars` fetches, with the settings infra/broker.py gives one node."""
    from infra.broker import Node, server_properties

    pom = (PROJECT_ROOT / "infra" / "maven" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)[1]
    assert services["kafka"]["image"] == f"apache/kafka:{version}"
    env = environment(services["kafka"])
    node = Node(1, 9092, 9093)
    local = dict(line.split("=", 1) for line in server_properties(node, [node], data="/d").splitlines())
    for key in (
        "auto.create.topics.enable",
        "default.replication.factor",
        "min.insync.replicas",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "group.initial.rebalance.delay.ms",
        "unclean.leader.election.enable",
    ):
        assert env["KAFKA_" + key.upper().replace(".", "_")] == local[key], key
    assert "topics-config" not in services  # model-updates is created compacted by `recsys topics`
