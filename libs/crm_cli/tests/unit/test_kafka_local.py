"""Unit tests of crm_cli.kafka_local: path logic and rendered files (no broker, no JVM)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from crm_cli import kafka_local
from crm_cli.kafka_local import (
    KAFKA_VERSION,
    KafkaLocalError,
    LocalKafka,
    default_cache_root,
    default_data_dir,
    find_project_root,
    new_cluster_id,
    port_from_env,
    render_java_properties,
    render_log4j2_properties,
    render_pom,
    render_server_properties,
)


def parse_properties(text: str) -> dict[str, str]:
    """Enough of java.util.Properties for unescaped ``key=value`` lines."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        result[key] = value
    return result


# --------------------------------------------------------------------- paths


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    member = root / "libs" / "crm_cli"
    member.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "ws"\n\n[tool.uv.workspace]\nmembers = ["libs/*"]\n'
    )
    (member / "pyproject.toml").write_text('[project]\nname = "crm-cli"\n')
    return root


def test_project_root_is_the_workspace_root_not_a_member(workspace: Path) -> None:
    deep = workspace / "libs" / "crm_cli" / "src"
    deep.mkdir()
    assert find_project_root(deep) == workspace.resolve()
    assert find_project_root(workspace) == workspace.resolve()


def test_project_root_falls_back_to_start(tmp_path: Path) -> None:
    lonely = tmp_path / "no" / "workspace"
    lonely.mkdir(parents=True)
    (tmp_path / "no" / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_project_root(lonely) == lonely.resolve()


def test_default_data_dir(workspace: Path, tmp_path: Path) -> None:
    cwd = workspace / "libs" / "crm_cli"
    assert default_data_dir({}, cwd) == workspace.resolve() / "var" / "kafka"
    assert default_data_dir({"CRM_VAR_DIR": str(tmp_path / "v")}, cwd) == tmp_path / "v" / "kafka"
    # An empty variable means "unset", not "the current directory".
    assert default_data_dir({"CRM_VAR_DIR": ""}, cwd) == workspace.resolve() / "var" / "kafka"


def test_default_cache_root(tmp_path: Path) -> None:
    assert default_cache_root({"CRM_KAFKA_CACHE": str(tmp_path / "c")}) == tmp_path / "c"
    assert default_cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "crm" / "kafka"
    assert default_cache_root({}) == Path.home() / ".cache" / "crm" / "kafka"


def test_port_from_env() -> None:
    assert port_from_env({}) == 9092
    assert port_from_env({"CRM_KAFKA_PORT": " 19092 "}) == 19092
    with pytest.raises(KafkaLocalError, match="not a port"):
        port_from_env({"CRM_KAFKA_PORT": "kafka"})
    with pytest.raises(KafkaLocalError, match="out of range"):
        port_from_env({"CRM_KAFKA_PORT": "65535"})  # the controller needs port + 1


def test_local_kafka_paths(workspace: Path, tmp_path: Path) -> None:
    env = {"CRM_KAFKA_CACHE": str(tmp_path / "cache"), "CRM_KAFKA_PORT": "29092"}
    kafka = LocalKafka(env=env, cwd=workspace / "libs" / "crm_cli")
    assert kafka.data_dir == workspace.resolve() / "var" / "kafka"
    assert kafka.libs_dir == (tmp_path / "cache").resolve() / KAFKA_VERSION / "libs"
    assert kafka.bootstrap == "127.0.0.1:29092"
    assert kafka.controller_port == 29093
    assert kafka.pid_file == kafka.data_dir / "broker.pid"
    assert kafka.server_log == kafka.data_dir / "logs" / "server.log"
    assert kafka.stdout_log == kafka.data_dir / "logs" / "stdout.log"
    assert kafka.cluster_id_file == kafka.data_dir / "cluster.id"


def test_explicit_arguments_win_over_env(tmp_path: Path) -> None:
    env = {"CRM_VAR_DIR": str(tmp_path / "ignored"), "CRM_KAFKA_PORT": "1234"}
    kafka = LocalKafka(data_dir=tmp_path / "mine", port=4321, cache_root=tmp_path / "c", env=env)
    assert kafka.data_dir == (tmp_path / "mine").resolve()
    assert kafka.port == 4321
    assert kafka.libs_dir == (tmp_path / "c").resolve() / KAFKA_VERSION / "libs"


# ----------------------------------------------------------------- rendering


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    props = parse_properties(
        render_server_properties(storage_dir=tmp_path / "storage", port=19092, controller_port=19093)
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "storage")
    for key in (
        "default.replication.factor",
        "min.insync.replicas",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "6"
    assert props["auto.create.topics.enable"] == "true"
    assert int(props["log.segment.bytes"]) == 64 * 1024 * 1024
    # a suite run with its clock ahead (scripts/test.sh) produces "future" timestamps
    assert int(props["log.message.timestamp.after.max.ms"]) == 2**63 - 1
    # Default retention is kept on purpose.
    assert not any(key.startswith("log.retention") for key in props)


def test_properties_escaping() -> None:
    text = render_java_properties([("a key:=", " C:\\dir/ü")])
    assert text == "a\\ key\\:\\==\\ C:\\\\dir/\\u00fc\n"
    # Characters outside the BMP become a UTF-16 surrogate pair.
    assert render_java_properties([("k", "\U0001f600")]) == "k=\\ud83d\\ude00\n"


def test_log4j2_properties(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "server.log"
    props = parse_properties(render_log4j2_properties(log_file))
    assert props["appender.server.fileName"] == str(log_file)
    assert props["appender.server.filePattern"] == f"{log_file}.%i"
    assert props["rootLogger.appenderRef.server.ref"] == "server"
    assert props["shutdownHook"] == "disable"


def test_pom_lists_the_broker_and_the_slf4j1_log4j_binding() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.fromstring(render_pom())
    assert root.findtext("m:packaging", namespaces=ns) == "pom"
    deps = {
        (d.findtext("m:artifactId", namespaces=ns), d.findtext("m:version", namespaces=ns))
        for d in root.iterfind("m:dependencies/m:dependency", ns)
    }
    assert ("kafka_2.13", KAFKA_VERSION) in deps
    assert ("log4j-slf4j-impl", kafka_local.LOG4J_VERSION) in deps
    assert ("log4j-core", kafka_local.LOG4J_VERSION) in deps


def test_cluster_id_looks_like_a_kafka_uuid() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22
        assert not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("garbage", None),
    ],
)
def test_java_major(output: str, major: int | None) -> None:
    assert kafka_local._java_major(output) == major


# ------------------------------------------------------- cache and pid state


def test_jars_cached_requires_a_marker_for_this_pom(tmp_path: Path) -> None:
    kafka = LocalKafka(data_dir=tmp_path / "d", port=19092, cache_root=tmp_path / "c", env={})
    assert not kafka.jars_cached()
    kafka.libs_dir.mkdir(parents=True)
    (kafka.libs_dir / "kafka_2.13-4.1.1.jar").write_bytes(b"")
    assert not kafka.jars_cached()  # jars without the marker: an interrupted download
    marker = kafka.libs_dir / ".classpath-complete"
    marker.write_text(json.dumps({"pom_sha256": "something else"}))
    assert not kafka.jars_cached()  # resolved from another pom
    marker.write_text(json.dumps({"pom_sha256": kafka._pom_digest()}))
    assert kafka.jars_cached()


def test_ensure_jars_without_maven_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    kafka = LocalKafka(data_dir=tmp_path / "d", port=19092, cache_root=tmp_path / "c", env={})
    with pytest.raises(KafkaLocalError, match="mvn not found"):
        kafka.ensure_jars()


def test_write_config_is_stable(tmp_path: Path) -> None:
    kafka = LocalKafka(data_dir=tmp_path / "d", port=19092, cache_root=tmp_path / "c", env={})
    kafka.write_config()
    first = kafka.server_properties.stat().st_mtime_ns
    kafka.write_config()
    assert kafka.server_properties.stat().st_mtime_ns == first  # unchanged: not rewritten
    props = parse_properties(kafka.server_properties.read_text())
    assert props["log.dirs"] == str(kafka.storage_dir)
    assert kafka.logs_dir.is_dir()


def test_stale_pid_file_is_not_our_broker(tmp_path: Path) -> None:
    kafka = LocalKafka(data_dir=tmp_path / "d", port=19092, cache_root=tmp_path / "c", env={})
    kafka.data_dir.mkdir(parents=True)
    # A live process that is not a Kafka broker (this interpreter) must never be signalled.
    kafka.pid_file.write_text(f"{os.getpid()}\n")
    assert kafka.managed_pid() is None
    assert kafka.stop() is None
    assert not kafka.pid_file.exists()


def test_stop_without_data_dir_is_a_no_op(tmp_path: Path) -> None:
    kafka = LocalKafka(data_dir=tmp_path / "never", port=19092, cache_root=tmp_path / "c", env={})
    assert kafka.stop() is None
    assert not kafka.data_dir.exists()
