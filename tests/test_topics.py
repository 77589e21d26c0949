"""connectors/topics.py on the embedded broker: load, read, --with-meta, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Producer

from connectors import topics as tool
from harness.kafka import EmbeddedKafka, read_topic

ROOT = Path(__file__).resolve().parents[1]

#: Three cards, interleaved, with spacing and key order a re-encoder would not keep.
LINES = [
    b'{"event_id": "e1", "card_id": "c1", "amount": 1.50}',
    b'{"card_id":"c2","event_id":"e2","amount":20}',
    b'{"event_id": "e3",  "card_id": "c3", "amount": 3e2}',
    b'{"event_id": "e4", "card_id": "c1", "amount": 4.0, "note": "caf\xc3\xa9"}',
    b'{"event_id": "e5", "card_id": "c2", "amount": 5}',
    b'{"event_id": "e6", "card_id": "c3", "amount": 6}',
    b'{"event_id": "e7", "card_id": "c1", "amount": 7}',
    b'{"event_id": "e8", "card_id": "c2", "amount": 8}',
    b'{"event_id": "e9", "card_id": "c1", "amount": 9}',
]


def _env(kafka: EmbeddedKafka | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERTOW_")}
    env["PYTHONPATH"] = str(ROOT)
    if kafka is not None:
        env["UNDERTOW_KAFKA_BOOTSTRAP_SERVERS"] = kafka.bootstrap_servers
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "connectors.topics", *args], cwd=ROOT, env=env,
                          capture_output=True, timeout=60)


def _write(tmp_path: Path, lines: list[bytes], name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_load_keys_by_field_and_read_gives_back_the_exact_lines(kafka, topics, tmp_path):
    t = topics("events", partitions=3)["events"]
    path = tmp_path / "in.jsonl"
    # CRLF endings and a blank line are not part of any record.
    path.write_bytes(b"\r\n".join(LINES[:3]) + b"\r\n\n" + b"\n".join(LINES[3:]) + b"\n")
    assert tool.main(["--brokers", kafka.bootstrap_servers, "load", "--topic", t,
                      "--file", str(path), "--key-field", "card_id"]) == 0

    msgs = read_topic(kafka.bootstrap_servers, t)
    assert sorted(m.value() for m in msgs) == sorted(LINES)  # untouched bytes
    card = {m.value(): json.loads(m.value())["card_id"] for m in msgs}
    assert all(m.key() == card[m.value()].encode() for m in msgs)
    parts: dict[str, set[int]] = {}
    for m in msgs:
        parts.setdefault(m.key().decode(), set()).add(m.partition())
    assert {k: len(v) for k, v in parts.items()} == {"c1": 1, "c2": 1, "c3": 1}
    # Within a partition the file's order is kept.
    for p in {m.partition() for m in msgs}:
        got = [m.value() for m in msgs if m.partition() == p]
        assert got == [line for line in LINES if line in got]

    # Read back by the real CLI, brokers from UNDERTOW_KAFKA_BOOTSTRAP_SERVERS.
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    r = _cli("read", "--topic", t, "--out", str(out), "--timeout", "1", env=_env(kafka))
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 15
    assert r.stderr.decode().splitlines() == [f"read 9 records from {t!r} -> {out}"]
    assert sorted(out.read_bytes().splitlines()) == sorted(LINES)

    # To stdout, with --max.
    r = _cli("read", "--topic", t, "--max", "4", "--timeout", "1", env=_env(kafka))
    assert r.returncode == 0, r.stderr
    got = r.stdout.splitlines()
    assert len(got) == 4 and set(got) <= set(LINES)


def test_load_without_key_field_sends_every_line_keyless(kafka, topics, tmp_path):
    t = topics("raw", partitions=1)["raw"]
    lines = [b"{oops", b"[1, 2]", b'{"card_id": "c1"}']
    path = _write(tmp_path, lines)
    assert tool.main(["--brokers", kafka.bootstrap_servers, "load", "--topic", t,
                      "--file", str(path)]) == 0
    msgs = read_topic(kafka.bootstrap_servers, t)
    assert [(m.key(), m.value()) for m in msgs] == [(None, v) for v in lines]


def test_with_meta_shows_a_dead_letter_with_its_headers(kafka, topics, tmp_path):
    t = topics("deadletter", partitions=2)["deadletter"]
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                         "log.connection.close": False})
    headers = [
        ("undertow.error.reason", b"bad_json"),
        ("undertow.error.detail", b"Expecting value: line 1 column 1 (char 0)"),
        ("undertow.error.step", b"decode_events"),
        ("undertow.error.topic", b"events"),
        ("undertow.error.partition", b"2"),
        ("undertow.error.offset", b"41"),
    ]
    producer.produce(t, b"{oops", b"c9", partition=1, timestamp=1_700_000_000_123,
                     headers=headers)
    producer.produce(t, b'{"event_id": "e1"}', None, partition=1, timestamp=1_700_000_000_456)
    producer.produce(t, None, b"c8", partition=1, timestamp=1_700_000_000_789)  # a tombstone
    assert producer.flush(10) == 0

    out = tmp_path / "dead.jsonl"
    assert tool.main(["--brokers", kafka.bootstrap_servers, "read", "--topic", t, "--with-meta",
                      "--out", str(out), "--timeout", "1"]) == 0
    got = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert got == [
        {"topic": t, "partition": 1, "offset": 0, "key": "c9", "timestamp": 1_700_000_000_123,
         "headers": {name: v.decode() for name, v in headers}, "value": "{oops"},
        {"topic": t, "partition": 1, "offset": 1, "key": None, "timestamp": 1_700_000_000_456,
         "headers": {}, "value": {"event_id": "e1"}},
        {"topic": t, "partition": 1, "offset": 2, "key": "c8", "timestamp": 1_700_000_000_789,
         "headers": {}, "value": None},
    ]
    # Without --with-meta: the values as they are, a tombstone as null.
    assert tool.main(["--brokers", kafka.bootstrap_servers, "read", "--topic", t,
                      "--out", str(out), "--timeout", "0"]) == 0
    assert out.read_bytes() == b'{oops\n{"event_id": "e1"}\nnull\n'


def test_a_bad_line_refuses_the_file_and_sends_nothing(kafka, topics, tmp_path, capsys):
    t = topics("events", partitions=3)["events"]
    cases = {
        b'{"card_id": "c1", "amount": ': "not JSON",
        b'["c1", 1]': "not a JSON object (a list)",
        b'{"card": "c1"}': "no field 'card_id'",
        b'{"card_id": null}': "field 'card_id' is null, not a string, number or boolean",
        b'{"card_id": {"id": 1}}': "field 'card_id' is a dict, not a string, number or boolean",
    }
    for bad, why in cases.items():
        path = _write(tmp_path, [LINES[0], b"", LINES[1], bad, LINES[2]])
        code = tool.main(["--brokers", kafka.bootstrap_servers, "load", "--topic", t,
                          "--file", str(path), "--key-field", "card_id"])
        err = capsys.readouterr().err.splitlines()
        assert code == 2
        assert len(err) == 1 and err[0].startswith(f"undertow topics: {path}:4: {why}"), err
    assert read_topic(kafka.bootstrap_servers, t) == []

    # A number is a key too (its JSON text).
    path = _write(tmp_path, [b'{"card_id": 17, "x": 1}'])
    assert tool.main(["--brokers", kafka.bootstrap_servers, "load", "--topic", t,
                      "--file", str(path), "--key-field", "card_id"]) == 0
    assert [m.key() for m in read_topic(kafka.bootstrap_servers, t)] == [b"17"]


def test_create_a_missing_topic_and_refuse_another_partition_count(kafka, tmp_path, capsys):
    t = f"created-{os.getpid()}-{time.monotonic_ns()}"
    path = _write(tmp_path, LINES)
    base = ["--brokers", kafka.bootstrap_servers, "load", "--topic", t, "--file", str(path),
            "--key-field", "card_id"]
    assert tool.main(base) == 2
    assert capsys.readouterr().err == (f"undertow topics: --topic: topic {t!r} does not exist "
                                       f"(--create --partitions N creates it)\n")
    assert t not in kafka.topic_partitions()

    assert tool.main([*base, "--create", "--partitions", "3"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"loaded 9 records from {path} into {t!r}, keyed by 'card_id'; ")
    assert kafka.topic_partitions()[t] == 3
    assert tool.main([*base, "--create", "--partitions", "2"]) == 2
    assert capsys.readouterr().err == (f"undertow topics: --partitions: topic {t!r} exists with "
                                       f"3 partitions, not 2\n")
    assert len(read_topic(kafka.bootstrap_servers, t)) == 9


def test_unreachable_brokers_are_one_line_and_status_2(tmp_path):
    path = _write(tmp_path, LINES)
    env = _env()
    env["UNDERTOW_KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"  # nothing listens on port 1
    for args in (["read", "--topic", "events"],
                 ["load", "--topic", "events", "--file", str(path)]):
        t0 = time.monotonic()
        r = _cli(*args, env=env)
        elapsed = time.monotonic() - t0
        assert r.returncode == 2
        assert r.stdout == b""
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("undertow topics: cannot reach the brokers 127.0.0.1:1: ")
        assert elapsed < 12
    # --brokers overrides the setting.
    r = _cli("--brokers", "127.0.0.1:2", "read", "--topic", "events", env=env)
    assert r.returncode == 2
    assert r.stderr.decode().startswith("undertow topics: cannot reach the brokers 127.0.0.1:2: ")


def test_a_missing_file_or_topic_is_one_line(kafka, tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert tool.main(["--brokers", kafka.bootstrap_servers, "load", "--topic", "x",
                      "--file", str(missing)]) == 2
    assert capsys.readouterr().err == (f"undertow topics: --file: cannot read {missing}: "
                                       f"No such file or directory\n")
    assert tool.main(["--brokers", kafka.bootstrap_servers, "read", "--topic",
                      "no-such-topic-here"]) == 2
    assert capsys.readouterr().err == ("undertow topics: --topic: topic 'no-such-topic-here' "
                                       "does not exist\n")
    assert "no-such-topic-here" not in kafka.topic_partitions()  # reading did not create it
