"""One place builds commands and topics: the builder's output is what the device accepts, and the
device's topics, the console's topics and the console's configured prefix all agree."""

from __future__ import annotations

import base64
import getpass
import json
import re
import time
from pathlib import Path

import pytest

from appliance.console import broker, commands
from appliance.console.fleet import Tracker
from appliance.console.store import Store
from appliance.core.clock import parse_rfc3339
from appliance.core.protocol import (
    COMMAND_ID,
    DEFAULT_TOPIC_PREFIX,
    DEVICE_TOPICS,
    NOT_FOR_THIS_SITE,
    CommandPolicy,
    CommandRejected,
    Topics,
    build_command,
    check_command,
    group_command_topic,
    parse_topic,
    site_topic,
)
from appliance.core.signing import generate_private_key
from appliance_dev.localnet import free_port
from tests.console.conftest import Console
from tests.support.site import meeting_body

NOW = 1_795_744_800.0
CONTRACT_FIELDS = {"v", "id", "type", "issued_at", "expires_at", "to", "body", "sig"}
PREFIX = "test/v9"


def policy_for(site: str, key) -> CommandPolicy:  # noqa: ANN001
    return CommandPolicy(site, key.public_key(), allowed_media_hosts=("127.0.0.1",))


def test_a_built_and_signed_command_passes_every_check_for_its_site() -> None:
    key = generate_private_key()
    command = build_command("meeting.start", meeting_body(), to=["kalibaru"], issued_at=NOW, ttl_s=600,
                            signing_key=key)
    payload = json.dumps(command).encode()
    accepted = check_command(payload, policy_for("kalibaru", key), NOW, lambda _: False)
    assert (accepted.id, accepted.type, accepted.to) == (command["id"], "meeting.start", ("kalibaru",))
    assert accepted.expires_at - accepted.issued_at == 600
    with pytest.raises(CommandRejected) as refused:
        check_command(payload, policy_for("pesanggaran", key), NOW, lambda _: False)
    assert refused.value.code == NOT_FOR_THIS_SITE


def test_the_builder_writes_exactly_the_contracts_envelope() -> None:
    key = generate_private_key()
    signed = build_command("ping", {}, to=["*"], issued_at=NOW, ttl_s=90, signing_key=key)
    assert set(signed) == CONTRACT_FIELDS
    assert signed["v"] == 1 and signed["type"] == "ping" and signed["to"] == ["*"] and signed["body"] == {}
    assert re.fullmatch(r"cmd-[0-9a-f]+", signed["id"]) and COMMAND_ID.match(signed["id"])
    assert signed["issued_at"].endswith("Z") and signed["expires_at"].endswith("Z")
    assert parse_rfc3339(signed["expires_at"]) - parse_rfc3339(signed["issued_at"]) == 90
    # The contract's signing rule, written out here rather than taken from appliance.core.signing.
    unsigned = {name: value for name, value in signed.items() if name != "sig"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    key.public_key().verify(base64.b64decode(signed["sig"], validate=True), canonical)

    plain = build_command("meeting.end", {"meeting_id": "m1"}, to=["kalibaru"], issued_at=NOW, ttl_s=60,
                          command_id="given-id")
    assert set(plain) == CONTRACT_FIELDS - {"sig"} and plain["id"] == "given-id"
    assert build_command("ping", {}, to=["*"], issued_at=NOW, ttl_s=60)["id"] != plain["id"]


def test_device_and_console_agree_on_topics_for_any_prefix(tmp_path: Path) -> None:
    device = Topics(PREFIX, "kalibaru", "kecamatan")
    for leaf in ("cmd", *DEVICE_TOPICS):
        topic = getattr(device, leaf)
        assert topic == site_topic(PREFIX, "kalibaru", leaf) and topic.startswith(f"{PREFIX}/")
        assert parse_topic(topic, PREFIX) == ("kalibaru", leaf)
        assert parse_topic(topic, DEFAULT_TOPIC_PREFIX) is None
    assert device.subscriptions == [device.cmd, group_command_topic(PREFIX, "all"),
                                    group_command_topic(PREFIX, "kecamatan")]

    store = Store(tmp_path / "console.db")
    try:
        assert commands.resolve_target(store, "kalibaru", None, PREFIX).topics == [device.cmd]
        assert commands.resolve_target(store, None, "kecamatan", PREFIX).topics == [device.group_cmds[1]]
        acl = broker.acl(store.sites(["kalibaru"]), PREFIX)
    finally:
        store.close()
    assert all(f"topic read {topic}" in acl for topic in device.subscriptions)
    assert all(f"topic write {getattr(device, leaf)}" in acl for leaf in DEVICE_TOPICS)

    tracker = Tracker("cmd-1", ["kalibaru"], PREFIX)
    ack = {"v": 1, "site": "kalibaru", "id": "cmd-1", "type": "ping", "ok": True, "state": "idle"}
    assert tracker.feed(device.ack, json.dumps(ack).encode(), time.monotonic()) and tracker.done


def test_a_console_with_its_own_prefix_provisions_serves_and_cleans_up_under_it(tmp_path: Path) -> None:
    """init --topic-prefix reaches the provisioning file, the broker's ACL, status and `sites remove`."""
    console = Console(tmp_path / "home", port=free_port())
    try:
        init = console.ok("init", "--broker-url", f"mqtts://localhost:{console.port}", "--media-host", "127.0.0.1",
                          "--topic-prefix", PREFIX, "--json").json
        assert init["topic_prefix"] == PREFIX
        console.ok("broker-config", "--out", str(console.home / "broker"), "--bind", "127.0.0.1",
                   "--run-as", getpass.getuser())
        console.start_broker()
        console.ok("provision", "kalibaru", "--out", str(tmp_path / "prov"))
        assert f'topic_prefix = "{PREFIX}"' in (tmp_path / "prov" / "appliance-site.toml").read_text()

        site = console.site_client(tmp_path / "prov")
        try:
            state = {"v": 1, "site": "kalibaru", "online": True, "state": "idle"}
            assert site.publish(Topics(PREFIX, "kalibaru", "kecamatan").state, json.dumps(state), retain=True) < 128
        finally:
            site.close()
        rows = {row["site"]: row for row in console.ok("status", "--json").json}
        assert rows["kalibaru"]["online"] is True

        removed = console.ok("sites", "remove", "kalibaru")
        assert "cleared kalibaru's retained state on the broker" in removed.out
        console.ok("sites", "add", "kalibaru", "--name", "Kecamatan Kalibaru", "--kind", "kecamatan")
        rows = {row["site"]: row for row in console.ok("status", "--json").json}
        assert rows["kalibaru"]["state"] == "never seen"  # the retained state under test/v9 is gone
    finally:
        console.stop_all()
