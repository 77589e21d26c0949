"""Faults with an answer (docs/broker.md, Faults), on the real embedded broker and a real
``python -m bytewax.run dataflows.stream:flow`` child: an unreachable broker, refused TLS or
SASL, data lost under the consumers' offsets and a broker gone mid-run are each one line on
stderr naming the broker and the setting, within 10 s, with the documented exit status or
behaviour; never a hang, a traceback or librdkafka's log lines."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from connectors.kafka import (
    EXIT_BAD_SETTING,
    EXIT_DATA_LOSS,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    KafkaFault,
    ProducerSink,
)
from connectors.settings import load_settings
from harness.dataflow import ROOT, bytewax_run
from harness.kafka import EmbeddedKafka, free_port, read_topic
from harness.process import ChildProcess
from harness.workload import WorkloadConfig, generate

FLOW = "dataflows.stream:flow"
#: Every fault is answered this fast, from the command's start (Python and Bytewax included).
WITHIN_S = 10.0


def flow_env(bootstrap: str, names: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of the fraud stream's live dataflow on ``names``' topics (no inherited
    ``UNDERTOW_*`` variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERTOW_")}
    return {
        **env,
        "UNDERTOW_STREAM": "streams/fraud.toml",
        "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "UNDERTOW_EVENTS_TOPIC": names["events"],
        "UNDERTOW_LABELS_TOPIC": names["labels"],
        "UNDERTOW_PREDICTIONS_TOPIC": names["predictions"],
        "UNDERTOW_DEADLETTER_TOPIC": names["deadletter"],
        **extra,
    }


def run_to_exit(env: dict[str, str]) -> tuple[int, list[str], float]:
    """Run the dataflow to its exit: (status, stderr's lines, seconds taken)."""
    t0 = time.monotonic()
    r = subprocess.run(bytewax_run(FLOW), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stderr.strip().splitlines(), time.monotonic() - t0


@pytest.fixture
def names() -> dict[str, str]:
    tag = os.urandom(4).hex()
    return {n: f"{n}-faults-{tag}" for n in ("events", "labels", "predictions", "deadletter")}


def test_an_unreachable_broker_is_one_line_and_status_3(names):
    port = free_port()  # nothing listens there
    status, lines, took = run_to_exit(flow_env(f"127.0.0.1:{port}", names))
    assert lines == [f"undertow: kafka: cannot reach the broker at 127.0.0.1:{port} "
                     "(UNDERTOW_KAFKA_BOOTSTRAP_SERVERS): connection refused"]
    assert status == EXIT_UNREACHABLE
    assert took < WITHIN_S


def test_a_wrong_host_name_is_one_line_and_status_3(names):
    status, lines, took = run_to_exit(flow_env("no-such-broker.invalid:9092", names))
    assert lines == ["undertow: kafka: cannot reach the broker at no-such-broker.invalid:9092 "
                     "(UNDERTOW_KAFKA_BOOTSTRAP_SERVERS): cannot resolve the host "
                     "'no-such-broker.invalid'"]
    assert status == EXIT_UNREACHABLE
    assert took < WITHIN_S


def test_tls_against_a_plaintext_broker_is_one_line_and_status_4(kafka: EmbeddedKafka, names):
    env = flow_env(kafka.bootstrap_servers, names, UNDERTOW_KAFKA_OPT_SECURITY_PROTOCOL="SSL")
    status, lines, took = run_to_exit(env)
    assert lines == [f"undertow: kafka: the broker at {kafka.bootstrap_servers} refused TLS "
                     "(UNDERTOW_KAFKA_OPT_SECURITY_PROTOCOL=SSL): no TLS handshake within 5 s; "
                     "is the listener TLS?"]
    assert status == EXIT_REFUSED
    assert took < WITHIN_S


def test_refused_sasl_is_one_line_and_status_4(kafka: EmbeddedKafka, names):
    env = flow_env(kafka.bootstrap_servers, names,
                   UNDERTOW_KAFKA_OPT_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                   UNDERTOW_KAFKA_OPT_SASL_MECHANISM="PLAIN",
                   UNDERTOW_KAFKA_OPT_SASL_USERNAME="someone",
                   UNDERTOW_KAFKA_OPT_SASL_PASSWORD="not-the-password")
    status, lines, took = run_to_exit(env)
    assert len(lines) == 1, lines
    prefix = (f"undertow: kafka: the broker at {kafka.bootstrap_servers} refused SASL PLAIN "
              "(UNDERTOW_KAFKA_OPT_SECURITY_PROTOCOL=SASL_PLAINTEXT, "
              "UNDERTOW_KAFKA_OPT_SASL_MECHANISM): ")
    assert lines[0].startswith(prefix), lines[0]
    assert "SASL PLAIN mechanism handshake failed" in lines[0]  # librdkafka's reason
    assert "not-the-password" not in lines[0]  # secrets are never printed
    assert status == EXIT_REFUSED
    assert took < WITHIN_S


def test_sasl_without_a_mechanism_librdkafka_has_is_a_bad_setting(kafka: EmbeddedKafka, names):
    env = flow_env(kafka.bootstrap_servers, names,
                   UNDERTOW_KAFKA_OPT_SECURITY_PROTOCOL="SASL_PLAINTEXT")  # GSSAPI by default
    status, lines, took = run_to_exit(env)
    assert len(lines) == 1, lines
    assert lines[0].startswith("undertow: bad setting: UNDERTOW_KAFKA_OPT_SASL_MECHANISM: "
                               "librdkafka refused the options: "), lines[0]
    assert "No provider for SASL mechanism GSSAPI" in lines[0]
    assert status == EXIT_BAD_SETTING
    assert took < WITHIN_S


def test_a_sink_whose_broker_is_gone_fails_bounded_with_one_line():
    """librdkafka's message.timeout.ms is 300 s; a sink's flush is bounded by ours."""
    port = free_port()
    settings = load_settings({}, kafka_bootstrap_servers=f"127.0.0.1:{port}",
                             kafka_options={"message.timeout.ms": "1000"})
    part = ProducerSink(settings, "predictions", lambda r: (b"k", r, None)).build("out", 0, 1)
    t0 = time.monotonic()
    with pytest.raises(KafkaFault) as caught:
        part.write_batch([b"a", b"b", b"c"])
    assert time.monotonic() - t0 < 4.0
    assert caught.value.line == (
        "undertow: kafka: could not write 3 records to 'predictions' in 1 s: the broker at "
        f"127.0.0.1:{port} does not answer (UNDERTOW_KAFKA_BOOTSTRAP_SERVERS; the wait is "
        "UNDERTOW_KAFKA_OPT_MESSAGE_TIMEOUT_MS)")
    assert caught.value.status == EXIT_UNREACHABLE


# -- a broker that loses the data, or goes away, under a running dataflow ------------------------

N_BEFORE, N_AFTER = 150, 40


def fraud_events(seed: int, n: int, *, later_by_ms: int = 0) -> list[dict]:
    """``n`` valid fraud events; ``later_by_ms`` moves them later in event time, with their own
    ids (so that they are neither late nor duplicates of the first ones)."""
    events = generate(WorkloadConfig(seed=seed, n_events=n, n_cards=30, n_merchants=10)).events
    if later_by_ms:
        events = [{**e, "event_id": f"later-{e['event_id']}", "ts": e["ts"] + later_by_ms}
                  for e in events]
    return events


def produce_events(bootstrap: str, topic: str, events: list[dict]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for e in events:
        p.produce(topic, orjson.dumps(e), e["card_id"].encode(), partition=0)
    assert p.flush(30) == 0


def prediction_ids(bootstrap: str, topic: str) -> set[str]:
    try:
        return {orjson.loads(m.value())["event_id"] for m in read_topic(bootstrap, topic, 5)}
    except Exception:  # noqa: BLE001 - not created yet on a new broker: nothing served yet
        return set()


def wait_for(what: str, check, timeout: float) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout`` s."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"no {what} within {timeout} s"
        time.sleep(0.2)
    return time.monotonic() - t0


def start_flow(env: dict[str, str], tmp_path: Path) -> ChildProcess:
    """The live dataflow, its stderr in ``tmp_path / "stderr.log"``."""
    return ChildProcess(bytewax_run(FLOW), env=env, cwd=ROOT, log_path=tmp_path / "stderr.log",
                        stdout_path=tmp_path / "stdout.log", name="bytewax.run").start()


def stderr_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "stderr.log").read_text().strip().splitlines()


def broker_with_data(port: int, names: dict[str, str]) -> EmbeddedKafka:
    broker = EmbeddedKafka(port=port).start()
    broker.create_topics([names["events"], names["labels"]], partitions=1)
    broker.create_topics([names["predictions"], names["deadletter"]], partitions=1)
    return broker


def replace_with_an_empty_broker(broker: EmbeddedKafka, names: dict[str, str]) -> EmbeddedKafka:
    """Stop ``broker`` and start an empty one on its port, the topics re-created (a consumer's
    metadata request may have auto-created some already: Tansu does)."""
    port = broker.port
    broker.stop()
    new = EmbeddedKafka(port=port).start()
    existing = new.topic_partitions()
    new.create_topics([n for n in names.values() if n not in existing], partitions=1)
    return new


def lost_line(bootstrap: str, topic: str, policy: str) -> str:
    return (f"undertow: kafka: data lost on topic {topic!r} partition 0 at {bootstrap}: offset "
            f"{N_BEFORE} asked, the broker holds no records (next offset 0) "
            f"(UNDERTOW_ON_DATA_LOSS={policy})")


def outage_line(bootstrap: str, wait_s: str = "30") -> str:
    return (f"undertow: kafka: lost the broker at {bootstrap} (UNDERTOW_KAFKA_BOOTSTRAP_SERVERS); "
            f"retrying for {wait_s} s (UNDERTOW_KAFKA_OPT_MESSAGE_TIMEOUT_MS)")


def test_data_lost_under_the_offsets_fails_with_status_5_by_default(names, tmp_path):
    broker = broker_with_data(free_port(), names)
    bootstrap = broker.bootstrap_servers
    child = start_flow(flow_env(bootstrap, names), tmp_path)
    try:
        produce_events(bootstrap, names["events"], fraud_events(1, N_BEFORE))
        wait_for("predictions", lambda: len(prediction_ids(bootstrap, names["predictions"]))
                 == N_BEFORE, 30)
        broker = replace_with_an_empty_broker(broker, names)
        t0 = time.monotonic()
        status = child.wait(WITHIN_S)
        took = time.monotonic() - t0
    finally:
        child.stop()
        broker.stop()
    lines = stderr_lines(tmp_path)
    assert lines[-1] == lost_line(bootstrap, names["events"], "fail")
    assert set(lines[:-1]) <= {outage_line(bootstrap)}, lines  # at most the outage's one line
    assert status == EXIT_DATA_LOSS
    assert took < WITHIN_S


def test_data_lost_with_earliest_reads_on_and_serves_new_events(names, tmp_path):
    broker = broker_with_data(free_port(), names)
    bootstrap = broker.bootstrap_servers
    api = free_port()
    env = flow_env(bootstrap, names, UNDERTOW_ON_DATA_LOSS="earliest",
                   BYTEWAX_DATAFLOW_API_ENABLED="true", BYTEWAX_DATAFLOW_API_PORT=str(api))
    child = start_flow(env, tmp_path)
    try:
        produce_events(bootstrap, names["events"], fraud_events(1, N_BEFORE))
        wait_for("predictions", lambda: len(prediction_ids(bootstrap, names["predictions"]))
                 == N_BEFORE, 30)
        broker = replace_with_an_empty_broker(broker, names)
        wait_for("data-loss line", lambda: any("data lost" in x for x in stderr_lines(tmp_path)),
                 WITHIN_S)
        after = fraud_events(2, N_AFTER, later_by_ms=86_400_000)
        produce_events(bootstrap, names["events"], after)
        wait_for("new predictions", lambda: prediction_ids(bootstrap, names["predictions"])
                 == {e["event_id"] for e in after}, 20)
        assert child.running  # it reads on
        text = urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=5).read()
    finally:
        child.stop()
        broker.stop()
    lines = stderr_lines(tmp_path)
    mine = [x for x in lines if x.startswith("undertow:")]
    assert mine[-1] == lost_line(bootstrap, names["events"], "earliest") + \
        "; reading on from offset 0"
    assert set(mine[:-1]) <= {outage_line(bootstrap)}, lines
    assert "Traceback" not in "\n".join(lines) and "%3|" not in "\n".join(lines)
    sample = (f'undertow_kafka_errors_total{{kind="data_loss",topic="{names["events"]}"}} 1.0')
    assert sample in text.decode()


def test_a_broker_gone_mid_run_is_one_line_and_status_3(names, tmp_path):
    broker = broker_with_data(free_port(), names)
    bootstrap = broker.bootstrap_servers
    child = start_flow(flow_env(bootstrap, names, UNDERTOW_KAFKA_OPT_MESSAGE_TIMEOUT_MS="3000"),
                       tmp_path)
    try:
        produce_events(bootstrap, names["events"], fraud_events(1, N_BEFORE))
        wait_for("predictions", lambda: len(prediction_ids(bootstrap, names["predictions"]))
                 == N_BEFORE, 30)
        broker.stop()
        t0 = time.monotonic()
        status = child.wait(WITHIN_S)
        took = time.monotonic() - t0
    finally:
        child.stop()
        broker.stop()
    lines = stderr_lines(tmp_path)
    assert lines == [outage_line(bootstrap, "3"),
                     f"undertow: kafka: the broker at {bootstrap} "
                     "(UNDERTOW_KAFKA_BOOTSTRAP_SERVERS) has been unreachable for 3 s "
                     "(UNDERTOW_KAFKA_OPT_MESSAGE_TIMEOUT_MS)"], lines
    assert status == EXIT_UNREACHABLE
    assert took < WITHIN_S

