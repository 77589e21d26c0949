"""The generator CLI's ``--stream`` choice (harness/generate.py): clicks and income workloads.

The card workload (``--stream fraud``, the default) is tested in tests/test_workload.py.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import orjson
import pytest

import harness.clickstream
import harness.generate
import harness.workload
from harness.clickstream import clicks_workload, generate_clicks
from harness.generate import OTHER_STREAMS, MemorySink, main, run_records
from harness.income import generate_income


def lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return data.splitlines()


def by_time(labels: list[dict]) -> list[dict]:
    return sorted(labels, key=lambda lb: lb["ts"])


@pytest.mark.parametrize("n", [0, 1, 37, 450, 3000])
def test_clicks_workload_is_generate_clicks_with_the_fewest_doubled_sessions_cut(n: int) -> None:
    sessions = max(1, n // 4)
    while len(generate_clicks(seed=7, n_sessions=sessions)[0]) < n:
        sessions *= 2
    events, labels = generate_clicks(seed=7, n_sessions=sessions)
    assert clicks_workload(7, n) == (events[:n], labels[:n])
    assert len(clicks_workload(7, n)[0]) == n
    with pytest.raises(ValueError, match="n_events must be >= 0"):
        clicks_workload(7, -1)


def test_cli_stream_clicks_writes_generate_clicks_records_to_jsonl(tmp_path: Path, capsys) -> None:
    # 800 clicks: 200 sessions of seed 3 hold more than that, so these are their first 800.
    events, labels = generate_clicks(seed=3, n_sessions=200)
    assert len(events) >= 800
    events, labels = events[:800], labels[:800]
    code = main(["--stream", "clicks", "--to", "jsonl", "--out-dir", str(tmp_path / "c"),
                 "--events", "800", "--seed", "3", "--quiet"])
    out = capsys.readouterr()
    assert code == 0 and out.err == ""
    summary = json.loads(out.out)
    assert summary.pop("seconds") >= 0
    assert summary == {"stream": "clicks", "events": 800, "labels": 800,
                       "positives": sum(lb["converted"] for lb in labels),
                       "delivery_errors": 0, "to": "jsonl"}
    assert lines(tmp_path / "c" / "events.jsonl") == [orjson.dumps(e) for e in events]
    # labels in the order they become known (their ts), as the card workload writes them
    assert lines(tmp_path / "c" / "labels.jsonl") == [orjson.dumps(lb) for lb in by_time(labels)]
    assert by_time(labels) != labels  # the order is really changed: the test can tell


def test_cli_stream_income_writes_generate_income_records(tmp_path: Path, capsys) -> None:
    events, labels = generate_income(11, 500)
    assert main(["--stream", "income", "--to", "jsonl", "--out-dir", str(tmp_path),
                 "--events", "500", "--seed", "11", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["stream"], summary["events"], summary["labels"], summary["positives"]) == (
        "income", 500, len(labels), sum(lb["high_income"] for lb in labels))
    assert len(labels) < 500  # some interviews are never labelled
    assert lines(tmp_path / "events.jsonl") == [orjson.dumps(e) for e in events]
    assert lines(tmp_path / "labels.jsonl") == [orjson.dumps(lb) for lb in by_time(labels)]


def test_run_records_merges_in_time_order_labels_first_keyed_by_the_entity() -> None:
    events = [{"event_id": "k0", "user_id": "a", "ts": 10},
              {"event_id": "k1", "user_id": "b", "ts": 20},
              {"event_id": "k2", "user_id": "a", "ts": 20},
              {"event_id": "k3", "user_id": "c", "ts": 30}]
    labels = [{"event_id": "k0", "user_id": "a", "converted": True, "ts": 20},
              {"event_id": "k1", "user_id": "b", "converted": False, "ts": 40},
              {"event_id": "k2", "user_id": "a", "converted": True, "ts": 20},
              {"event_id": "k3", "user_id": "c", "converted": False, "ts": 31}]
    sink = MemorySink()
    summary = run_records(OTHER_STREAMS["clicks"], events, labels, sink)
    assert [(kind, orjson.loads(v)["event_id"], key, ts) for kind, v, key, ts in sink.records] == [
        ("event", "k0", b"a", 10),
        ("label", "k0", b"a", 20),  # labels first at a tie, in their own order
        ("label", "k2", b"a", 20),
        ("event", "k1", b"b", 20),
        ("event", "k2", b"a", 20),
        ("event", "k3", b"c", 30),
        ("label", "k3", b"c", 31),
        ("label", "k1", b"b", 40),
    ]
    assert [orjson.loads(v) for kind, v, *_ in sink.records if kind == "event"] == events
    assert summary.pop("seconds") >= 0
    assert summary == {"stream": "clicks", "events": 4, "labels": 4, "positives": 2}


def test_income_records_are_keyed_by_person_id() -> None:
    events, labels = generate_income(2, 200)
    sink = MemorySink()
    run_records(OTHER_STREAMS["income"], events, labels, sink)
    assert len(sink.records) == len(events) + len(labels)
    for _kind, value, key, ts in sink.records:
        record = orjson.loads(value)
        assert key == record["person_id"].encode() and ts == record["ts"]
    assert [ts for *_, ts in sink.records] == sorted(ts for *_, ts in sink.records)


@pytest.mark.parametrize(("args", "named"), [
    (["--cards", "10", "--drift-at", "none"], "--cards, --drift-at"),
    (["--fraud-rate", "0.03"], "--fraud-rate"),  # refused even with its default value
    (["--malformed", "5", "--card", "3"], "--malformed, --cards"),  # an abbreviation too
])
def test_fraud_only_options_are_refused_in_one_line_for_other_streams(
    tmp_path: Path, capsys, args: list[str], named: str
) -> None:
    out_dir = tmp_path / "out"
    code = main(["--stream", "clicks", "--to", "jsonl", "--out-dir", str(out_dir), *args])
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    assert out.err == f"generate: {named} only apply to --stream fraud, not --stream clicks\n"
    assert not out_dir.exists()


def test_negative_event_count_is_refused_for_other_streams(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--stream", "income", "--to", "jsonl", "--out-dir", str(tmp_path), "--events", "-1"])
    assert info.value.code == 2
    assert "--events must be >= 0, got -1" in capsys.readouterr().err


def test_stream_fraud_is_the_default_and_writes_the_same_bytes(tmp_path: Path, capsys) -> None:
    common = ["--to", "jsonl", "--events", "2000", "--seed", "9", "--malformed", "4", "--quiet"]
    assert main([*common, "--out-dir", str(tmp_path / "a")]) == 0
    assert main(["--stream", "fraud", *common, "--out-dir", str(tmp_path / "b")]) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    first.pop("seconds"), second.pop("seconds")
    assert first == second and "stream" not in first  # the card summary line is unchanged
    for name in ("events.jsonl", "labels.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_unknown_stream_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--stream", "tulips"])
    assert info.value.code == 2
    assert "invalid choice: 'tulips'" in capsys.readouterr().err


@pytest.mark.parametrize("module", [harness.workload, harness.generate, harness.clickstream])
def test_doctests(module) -> None:
    """harness/ is not among pytest's doctest paths: its examples run here."""
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
