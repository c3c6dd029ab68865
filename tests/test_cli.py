"""The `tidings` command line against a real SQLite broker in a temporary directory."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import tidings
from tidings.cli import app
from tidings.event import Event, event_to_message
from tidings.records import Message

Cli = Callable[..., Result]
TIDINGS = Path(sys.executable).with_name("tidings")


@pytest.fixture
def url(tmp_path: Path) -> str:
    """An existing, empty broker database."""
    address = f"sqlite:///{tmp_path}/bus.db"

    async def create() -> None:
        async with tidings.connect(address):
            pass

    asyncio.run(create())
    return address


@pytest.fixture
def cli(url: str) -> Cli:
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, ["--broker", url, *args], env=env)

    return invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def json_lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def create_topic(url: str, name: str, partitions: int = 1) -> None:
    async def go() -> None:
        async with tidings.connect(url) as broker:
            await broker.admin.create_topic(name, partitions)

    asyncio.run(go())


def publish(url: str, topic: str, messages: Sequence[Message]) -> None:
    async def go() -> None:
        async with tidings.connect(url) as broker:
            await broker.publish(topic, messages)

    asyncio.run(go())


def raw(n: int, partition: int | None = None) -> list[Message]:
    return [Message(f"m{i}".encode(), partition=partition) for i in range(n)]


def events(n: int, partition: int | None = None, *, binary: bool = False) -> list[Message]:
    messages = []
    for i in range(n):
        message = event_to_message(Event(type="order.placed", data={"n": i}), binary=binary)
        messages.append(Message(message.value, message.key, message.headers, partition))
    return messages


def consume_and_commit(url: str, group: str, topic: str, count: int) -> None:
    """Consume the first `count` records of a one-partition topic and commit them."""

    async def go() -> None:
        async with (
            tidings.connect(url) as broker,
            broker.subscribe(group, [topic], max_batch=count) as consumer,
        ):
            batch = await consumer.fetch(timeout=10)
            assert batch is not None and len(batch) == count
            await consumer.commit(batch)

    asyncio.run(go())


def assert_clean_failure(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


# topics --------------------------------------------------------------------------------


def test_topics_create_list_describe(cli: Cli, url: str) -> None:
    created = cli("topics", "create", "orders", "--partitions", "3", "--retention-ms", "86400000")
    assert created.exit_code == 0, created.output
    assert "orders: 3 partition(s), retention 1d" in created.stdout
    assert cli("topics", "create", "audit", "--retention-bytes", "1048576").exit_code == 0
    publish(url, "orders", raw(4, partition=0) + raw(2, partition=2))

    listed = ok_json(cli("topics", "list", "--json"))
    assert [t["name"] for t in listed] == ["audit", "orders"]
    audit, orders = listed
    assert (audit["retention_bytes"], audit["retention_ms"], audit["records"]) == (1 << 20, None, 0)
    assert orders["retention_ms"] == 86_400_000
    assert orders["records"] == 6
    assert [p["end_offset"] for p in orders["partitions"]] == [4, 0, 2]

    described = ok_json(cli("topics", "describe", "orders", "--json"))
    assert described == orders

    table = cli("topics", "list")
    assert table.exit_code == 0, table.output
    assert "orders" in table.stdout and "0..4 0..0 0..2" in table.stdout
    assert "1 MiB" in table.stdout and "1d" in table.stdout
    table = cli("topics", "describe", "orders")
    assert table.exit_code == 0, table.output
    assert "Start offset" in table.stdout and "6 records" in table.stdout


def test_topics_list_empty_and_env_broker(url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["topics", "list"], env={"TIDINGS_BROKER": url})
    assert result.exit_code == 0, result.output
    assert "no topics" in result.stdout
    typo = f"sqlite:///{tmp_path}/typo.db"
    missing = CliRunner().invoke(app, ["--broker", typo, "topics", "list"])
    assert missing.exit_code == 2
    assert "no broker database at" in missing.stderr
    assert not (tmp_path / "typo.db").exists()


def test_topics_create_existing(cli: Cli) -> None:
    created = cli("topics", "create", "orders", "--partitions", "2", "--retention-ms", "60000")
    assert created.exit_code == 0, created.output
    assert_clean_failure(cli("topics", "create", "orders"), "error: topic 'orders' already exists")

    for same in (["--partitions", "2"], [], ["--retention-ms", "60000"]):
        again = cli("topics", "create", "orders", *same, "--exist-ok", "--json")
        assert ok_json(again)["name"] == "orders"
        assert "warning" not in again.stderr

    for different in (["--partitions", "5"], ["--retention-bytes", "4096"]):
        kept = cli("topics", "create", "orders", *different, "--exist-ok", "--json")
        assert (len(ok_json(kept)["partitions"]), ok_json(kept)["retention_bytes"]) == (2, None)
        assert "warning: topic 'orders' already exists with other settings" in kept.stderr


# groups and replay ---------------------------------------------------------------------


def test_groups_list_and_describe_show_committed_offsets_and_lag(cli: Cli, url: str) -> None:
    create_topic(url, "orders")
    publish(url, "orders", raw(10))
    consume_and_commit(url, "billing", "orders", 4)

    listed = ok_json(cli("groups", "list", "--json"))
    assert listed == [{"name": "billing", "members": 0, "lag": 6}]

    described = ok_json(cli("groups", "describe", "billing", "--json"))
    assert described["members"] == []
    assert described["lag"] == 6
    [partition] = described["partitions"]
    assert partition["topic"] == "orders"
    assert (partition["committed"], partition["end_offset"], partition["lag"]) == (4, 10, 6)
    assert partition["owner"] is None

    table = cli("groups", "describe", "billing")
    assert table.exit_code == 0, table.output
    assert "group billing: 0 live member(s), lag 6" in table.stdout
    assert "orders" in table.stdout
    assert "billing" in cli("groups", "list").stdout


def test_replay_resets_committed_offsets(cli: Cli, url: str) -> None:
    create_topic(url, "orders")
    create_topic(url, "audit")
    publish(url, "orders", raw(10))
    publish(url, "audit", raw(3))
    consume_and_commit(url, "billing", "orders", 4)

    replayed = ok_json(cli("replay", "billing", "--to", "earliest", "--json"))
    assert replayed == {
        "group": "billing",
        "offsets": [{"topic": "orders", "partition": 0, "offset": 0}],
    }
    partition = ok_json(cli("groups", "describe", "billing", "--json"))["partitions"][0]
    assert (partition["committed"], partition["lag"]) == (0, 10)

    table = cli("replay", "billing", "--to", "7", "--topic", "orders", "--topic", "audit")
    assert table.exit_code == 0, table.output
    assert "resumes at" in table.stdout
    described = ok_json(cli("groups", "describe", "billing", "--json"))
    committed = {p["topic"]: p["committed"] for p in described["partitions"]}
    assert committed == {"audit": 3, "orders": 7}

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ok_json(cli("replay", "billing", "--to", future, "--topic", "orders", "--json")) == {
        "group": "billing",
        "offsets": [{"topic": "orders", "partition": 0, "offset": 10}],
    }


def test_replay_without_offsets_needs_topics(cli: Cli, url: str) -> None:
    create_topic(url, "orders")
    assert_clean_failure(
        cli("replay", "nobody", "--to", "earliest"), "consumer group 'nobody' does not exist"
    )
    replayed = ok_json(cli("replay", "fresh", "--to", "latest", "--topic", "orders", "--json"))
    assert replayed["offsets"] == [{"topic": "orders", "partition": 0, "offset": 0}]
    assert_clean_failure(
        cli("replay", "fresh", "--to", "earliest", "--topic", "missing"),
        "topic 'missing' does not exist",
    )


async def test_replay_refused_while_group_has_live_members(cli: Cli, url: str) -> None:
    await asyncio.to_thread(create_topic, url, "orders")
    await asyncio.to_thread(publish, url, "orders", raw(3))
    await asyncio.to_thread(consume_and_commit, url, "billing", "orders", 2)
    async with tidings.connect(url) as broker:
        consumer = broker.subscribe("billing", ["orders"])
        await consumer.fetch(timeout=0)

        refused = await asyncio.to_thread(cli, "replay", "billing", "--to", "earliest")
        assert_clean_failure(refused, "live member", "billing")

        described = await asyncio.to_thread(cli, "groups", "describe", "billing", "--json")
        [member] = ok_json(described)["members"]
        assert member["topics"] == ["orders"]
        assert member["partitions"] == [{"topic": "orders", "partition": 0}]
        table = await asyncio.to_thread(cli, "groups", "describe", "billing")
        assert "1 live member(s)" in table.stdout
        assert "orders[0]" in table.stdout
        await consumer.close()

    described = await asyncio.to_thread(cli, "groups", "describe", "billing", "--json")
    assert ok_json(described)["partitions"][0]["committed"] == 2


# tail ----------------------------------------------------------------------------------


def test_tail_json_from_earliest_with_limit(cli: Cli, url: str) -> None:
    create_topic(url, "orders")
    publish(url, "orders", events(5))

    lines = json_lines(cli("tail", "orders", "--from", "earliest", "--limit", "3", "--json"))
    assert [line["offset"] for line in lines] == [0, 1, 2]
    assert {(line["topic"], line["partition"]) for line in lines} == {("orders", 0)}
    assert [line["event"]["type"] for line in lines] == ["order.placed"] * 3
    assert [line["event"]["data"] for line in lines] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(isinstance(line["timestamp"], int) for line in lines)


def test_tail_reports_undecodable_records_and_goes_on(cli: Cli, url: str) -> None:
    create_topic(url, "orders")
    publish(url, "orders", events(1))
    publish(url, "orders", [Message(b"\x00 not an event")])
    publish(url, "orders", events(1, binary=True))

    lines = json_lines(cli("tail", "orders", "--from", "earliest", "--no-follow", "--json"))
    assert [line["offset"] for line in lines] == [0, 1, 2]
    assert lines[0]["event"]["data"] == lines[2]["event"]["data"] == {"n": 0}
    assert "event" not in lines[1]
    assert lines[1]["error"].startswith("cannot decode the event at orders[0]@1")

    text = cli("tail", "orders", "--from", "earliest", "--no-follow")
    assert text.exit_code == 0, text.output
    shown = text.stdout.splitlines()
    assert len(shown) == 2
    assert "orders[0]@0" in shown[0] and "order.placed v1" in shown[0] and '{"n":0}' in shown[0]
    assert "orders[0]@2" in shown[1]
    assert text.stderr.startswith("error: cannot decode the event at orders[0]@1: ")


def test_tail_no_follow_stops_at_the_end_of_every_partition(cli: Cli, url: str) -> None:
    create_topic(url, "orders", partitions=3)
    publish(url, "orders", events(3, partition=0) + events(2, partition=2))

    lines = json_lines(cli("tail", "orders", "--from", "earliest", "--no-follow", "--json"))
    assert sorted((line["partition"], line["offset"]) for line in lines) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (2, 0),
        (2, 1),
    ]

    from_offset = json_lines(cli("tail", "orders", "--from", "2", "--no-follow", "--json"))
    assert [(line["partition"], line["offset"]) for line in from_offset] == [(0, 2)]

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert json_lines(cli("tail", "orders", "--from", future, "--no-follow", "--json")) == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert len(json_lines(cli("tail", "orders", "--from", past, "--no-follow", "--json"))) == 5
    assert json_lines(cli("tail", "orders", "--no-follow", "--json")) == []


def test_tail_leaves_no_committed_offsets(cli: Cli, url: str) -> None:
    create_topic(url, "orders")
    publish(url, "orders", events(3))
    assert len(json_lines(cli("tail", "orders", "--from", "earliest", "--limit", "2", "--json")))

    for group in ok_json(cli("groups", "list", "--json")):
        assert group["name"].startswith("tidings-tail-")
        described = cli("groups", "describe", group["name"], "--json")
        if described.exit_code == 0:
            assert all(p["committed"] is None for p in json.loads(described.stdout)["partitions"])


def default_sigint() -> None:
    """Children of a shell's background job start with SIGINT ignored; undo that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_tail_follows_new_events_and_exits_cleanly_on_ctrl_c(url: str) -> None:
    create_topic(url, "orders")
    publish(url, "orders", events(1))
    process = subprocess.Popen(
        [str(TIDINGS), "--broker", url, "tail", "orders", "--from", "earliest", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        publish(url, "orders", events(1))
        second = json.loads(process.stdout.readline())
        assert (first["offset"], second["offset"]) == (0, 1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


# errors and the console script ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["topics", "describe", "nope"], ["error: topic 'nope' does not exist"]),
        (["topics", "create", "bad name"], ["error: topic name 'bad name' contains"]),
        (["groups", "describe", "nope"], ["error: consumer group 'nope' does not exist"]),
        (["tail", "nope"], ["error: topic 'nope' does not exist"]),
        (["replay", "g", "--to", "yesterday"], ["error: cannot seek to 'yesterday'"]),
        (["replay", "g", "--to", "-3"], ["error: offset must be >= 0"]),
        (["tail", "orders", "--from", "soon"], ["error: cannot seek to 'soon'"]),
        (
            ["topics", "create", "x", "--partitions", "0"],
            ["--partitions", "greater than or equal to 1"],
        ),
        (["topics", "create", "x", "--retention-ms", "0"], ["--retention-ms"]),
        (["tail", "orders", "--limit", "0"], ["--limit"]),
        (["replay", "g"], ["--to"]),
    ],
)
def test_bad_input_exits_2_with_a_message(cli: Cli, args: list[str], needles: list[str]) -> None:
    assert_clean_failure(cli(*args), *needles)


@pytest.mark.parametrize(
    ("broker", "needle"),
    [
        ("nonsense", "error: broker URL 'nonsense' is malformed"),
        ("foo://x", "error: unknown broker scheme 'foo'"),
        ("sqlite://host/bus.db", "has a host 'host'"),
    ],
)
def test_bad_broker_url_exits_2(broker: str, needle: str) -> None:
    result = CliRunner().invoke(app, ["--broker", broker, "topics", "list"])
    assert_clean_failure(result, needle)


def test_storage_error_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bus.db").write_bytes(b"this is not a database" * 100)
    result = CliRunner().invoke(app, ["--broker", f"sqlite:///{tmp_path}/bus.db", "topics", "list"])
    assert_clean_failure(result, "error:", "not a usable SQLite database")


def test_console_script(url: str) -> None:
    create_topic(url, "orders", partitions=2)
    completed = subprocess.run(
        [str(TIDINGS), "--broker", url, "topics", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    [topic] = json.loads(completed.stdout)
    assert (topic["name"], len(topic["partitions"])) == ("orders", 2)

    failed = subprocess.run(
        [str(TIDINGS), "--broker", url, "topics", "describe", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 2
    assert "error: topic 'nope' does not exist" in failed.stderr
    assert "Traceback" not in failed.stderr


# tidings demo --------------------------------------------------------------------------

FAKE_EXAMPLE = """
import json, os, signal, sys, time

signal.signal(signal.SIGINT, lambda *_: (print("interrupted", flush=True), sys.exit(130)))
print(json.dumps({"args": sys.argv[1:], "broker": os.environ.get("TIDINGS_BROKER"),
                  "pid": os.getpid()}), flush=True)
if "--wait" in sys.argv:
    time.sleep(60)
sys.exit(int(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv else 0)
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory that looks like a tidings checkout to `tidings demo`."""
    (tmp_path / "examples" / "orders").mkdir(parents=True)
    (tmp_path / "examples" / "__init__.py").write_text("")
    (tmp_path / "examples" / "orders" / "__init__.py").write_text("")
    (tmp_path / "examples" / "orders" / "__main__.py").write_text(FAKE_EXAMPLE)
    return tmp_path


def run_demo(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_BROKER"}
    return subprocess.run(
        [str(TIDINGS), *args], cwd=directory, env=env, capture_output=True, text=True, timeout=60
    )


def test_demo_becomes_the_example_with_its_arguments_and_exit_status(checkout: Path) -> None:
    plain = run_demo(checkout, "demo", "--orders", "3", "--exit")
    assert plain.returncode == 0, plain.stderr
    shown = json.loads(plain.stdout)
    assert (shown["args"], shown["broker"]) == (["--orders", "3", "--exit"], None)

    failed = run_demo(checkout, "--broker", "memory://x", "demo", "--code", "7")
    assert failed.returncode == 7, failed.stderr
    assert json.loads(failed.stdout)["broker"] == "memory://x"
    assert json.loads(run_demo(checkout, "demo", "--help").stdout)["args"] == ["--help"]


def test_demo_ctrl_c_reaches_the_example(checkout: Path) -> None:
    process = subprocess.Popen(
        [str(TIDINGS), "demo", "--wait"],
        cwd=checkout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["pid"] == process.pid  # the same process
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (process.returncode, stdout) == (130, "interrupted\n"), stderr


def test_demo_outside_a_checkout_or_without_the_extra_fails_clearly(
    checkout: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    assert_clean_failure(
        CliRunner().invoke(app, ["demo", "--orders", "1"]),
        f"{elsewhere} has no examples/orders/__main__.py",
        "run `tidings demo` from the repository root",
    )
    monkeypatch.chdir(checkout)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "uvicorn" else real(name)
    )
    assert_clean_failure(
        CliRunner().invoke(app, ["demo"]), "the demo needs uvicorn", "pip install -e '.[demo]'"
    )
