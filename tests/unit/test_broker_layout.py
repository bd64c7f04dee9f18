"""Where the local Kafka listens: one fact (the bootstrap), not two settings that can disagree (issue 19, item 7)."""

import pytest

from infra.broker import BrokerConfigError, Node, check_no_stale_port, layout, server_properties
from recsys.settings import Settings


def test_the_local_broker_listens_on_the_bootstraps_port():
    # Before: RECSYS_KAFKA_BOOTSTRAP=127.0.0.1:19092 with the port setting left at 9092 started a broker on 9092.
    assert layout(Settings(kafka_bootstrap="127.0.0.1:19092")) == [Node(1, 19092, 19093)]
    assert layout(Settings(kafka_bootstrap="127.0.0.1:9092")) == [Node(1, 9092, 9093)]  # the defaults
    assert layout(Settings(kafka_bootstrap="localhost:19092", kafka_controller_port=20000)) == [Node(1, 19092, 20000)]


def test_a_stale_broker_port_that_disagrees_is_refused_with_a_clear_message():
    s = Settings(kafka_bootstrap="127.0.0.1:19092")
    check_no_stale_port(s, {})
    check_no_stale_port(s, {"RECSYS_BROKER_PORT": "19092"})  # agreeing: harmless
    with pytest.raises(BrokerConfigError, match=r"RECSYS_BROKER_PORT=9092 disagrees.*19092"):
        check_no_stale_port(s, {"RECSYS_BROKER_PORT": "9092"})
    assert "broker_port" not in Settings.model_fields  # one setting, not two


def test_a_remote_bootstrap_needs_no_local_broker():
    with pytest.raises(BrokerConfigError, match=r"not a port on 127\.0\.0\.1"):
        layout(Settings(kafka_bootstrap="kafka-1.example:9092"))


def test_a_three_node_cluster_takes_the_listed_or_next_ports_and_a_quorum_of_three():
    listed = Settings(kafka_bootstrap="127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094")
    assert layout(listed) == [Node(1, 19092, 19095), Node(2, 19093, 19096), Node(3, 19094, 19097)]
    assert layout(Settings(kafka_bootstrap="127.0.0.1:19092"), nodes=3) == layout(listed)
    with pytest.raises(BrokerConfigError, match="more than"):
        layout(listed, nodes=1)
    with pytest.raises(BrokerConfigError, match="overlap"):
        layout(Settings(kafka_bootstrap="127.0.0.1:19092", kafka_controller_port=19093), nodes=3)
    nodes = layout(listed)
    config = dict(line.split("=", 1) for line in server_properties(nodes[1], nodes, data="/d").splitlines())
    assert config["controller.quorum.bootstrap.servers"] == "127.0.0.1:19095,127.0.0.1:19096,127.0.0.1:19097"
    assert "controller.quorum.voters" not in config
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:19096"
    assert config["min.insync.replicas"] == "2" and config["default.replication.factor"] == "3"
    assert config["offsets.topic.replication.factor"] == "3" and config["unclean.leader.election.enable"] == "false"


def test_one_node_has_the_single_node_settings():
    [node] = layout(Settings(kafka_bootstrap="127.0.0.1:19092"))
    config = dict(line.split("=", 1) for line in server_properties(node, [node], data="/d").splitlines())
    assert {
        k: config[k]
        for k in (
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
            "transaction.state.log.min.isr",
            "group.initial.rebalance.delay.ms",
            "process.roles",
            "log.dirs",
        )
    } == {
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "process.roles": "broker,controller",
        "log.dirs": "/d",
    }
    assert all(
        address.startswith(("PLAINTEXT://127.0.0.1:", "CONTROLLER://127.0.0.1:"))
        for key in ("listeners", "advertised.listeners")
        for address in config[key].split(",")
    )
