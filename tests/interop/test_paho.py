"""Interop tests: Eclipse Paho's Python client (paho-mqtt 2.x) against `moat serve`.

Each test starts the real binary ($MOAT_BIN) on an ephemeral 127.0.0.1 port. Waits are on
events with generous timeouts, never fixed sleeps.
"""

import os
import queue
import socket
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
import pytest

TIMEOUT = 20
MOAT_BIN = os.environ.get("MOAT_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "moat"))


class Moat:
    def __init__(self, config_extra=""):
        self.dir = tempfile.TemporaryDirectory()
        path = os.path.join(self.dir.name, "moat.toml")
        with open(path, "w") as f:
            f.write('[[listeners]]\nname = "local"\nbind = "127.0.0.1:0"\nallow_anonymous = true\n')
            f.write(config_extra)
            if "[admin]" not in config_extra:
                f.write('\n[admin]\nbind = "127.0.0.1:0"\n')
        assert os.path.exists(MOAT_BIN), f"{MOAT_BIN} missing: build with cargo build -p moat-cli"
        self.proc = subprocess.Popen(
            [MOAT_BIN, "serve", "--config", path],
            cwd=self.dir.name,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert "mqtt://" in line, f"unexpected first line: {line!r}"
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.dir.cleanup()


@pytest.fixture
def moat():
    m = Moat()
    yield m
    m.stop()


class Client:
    """A paho client with queues for what arrives."""

    def __init__(self, moat, client_id, protocol=mqtt.MQTTv5, clean=True, properties=None, will=None,
                 keepalive=60):
        self.messages = queue.Queue()
        self.events = queue.Queue()
        kwargs = {}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_connect = lambda c, u, f, rc, p: self.events.put(("connack", f, rc, p))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.events.put(("suback", mid, rcs))
        self.c.on_unsubscribe = lambda c, u, mid, rcs, p: self.events.put(("unsuback", mid, rcs))
        self.c.on_publish = lambda c, u, mid, rc, p: self.events.put(("puback", mid, rc))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.events.put(("disconnect", rc))
        if will:
            self.c.will_set(*will)
        connect_kwargs = {"keepalive": keepalive}
        if protocol == mqtt.MQTTv5:
            connect_kwargs["clean_start"] = clean
            if properties is not None:
                connect_kwargs["properties"] = properties
        self.c.connect("127.0.0.1", moat.port, **connect_kwargs)
        self.c.loop_start()
        kind, flags, rc, props = self.wait("connack")
        assert not rc.is_failure, rc
        self.session_present = flags.session_present
        self.connack_properties = props

    def wait(self, kind):
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} within {TIMEOUT}s"
            ev = self.events.get(timeout=left)
            if ev[0] == kind:
                return ev

    def subscribe(self, topic, qos=0, options=None, properties=None):
        opts = options or SubscribeOptions(qos=qos)
        if self.c._protocol == mqtt.MQTTv5:
            _, mid = self.c.subscribe(topic, options=opts, properties=properties)
        else:
            _, mid = self.c.subscribe(topic, qos)
        ev = self.wait("suback")
        assert ev[1] == mid
        return ev[2]

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos > 0:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()
        return info

    def get(self, timeout=TIMEOUT):
        return self.messages.get(timeout=timeout)

    def none(self, wait=0.5):
        """Asserts that nothing arrives within `wait` seconds (used only after a round trip
        proved that the broker has processed what came before)."""
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=wait)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Drops the connection without DISCONNECT."""
        self.c.loop_stop()
        self.c.socket().shutdown(socket.SHUT_RDWR)
        self.c.socket().close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_qos_0_1_2_round_trip(moat, protocol):
    c = Client(moat, "paho-rt", protocol)
    c.subscribe("TopicA/#", 2)
    for qos in (0, 1, 2):
        c.publish("TopicA/B", f"qos {qos}".encode(), qos)
        m = c.get()
        assert (m.topic, m.payload, m.qos) == ("TopicA/B", f"qos {qos}".encode(), qos)
    c.close()


def test_retained_with_user_properties(moat):
    c = Client(moat, "paho-ret")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("a", "2"), ("c", "3")]
    for qos, topic in enumerate(["TopicA/B", "Topic/C", "TopicA/C"]):
        c.publish(topic, b"r", qos, retain=True, properties=props)
    c.subscribe("+/+", 2)
    got = [c.get() for _ in range(3)]
    assert sorted(m.qos for m in got) == [0, 1, 2]
    for m in got:
        assert m.retain
        assert m.properties.UserProperty == [("a", "2"), ("c", "3")]
    for topic in ["TopicA/B", "Topic/C", "TopicA/C"]:
        c.publish(topic, b"", 1, retain=True)
    c.close()
    d = Client(moat, "paho-ret2")
    d.subscribe("+/+", 2)
    d.publish("probe/x", b"p", 1)
    assert d.get().topic == "probe/x"  # the only message: all retained were cleared
    d.close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_will_on_abrupt_close(moat, protocol):
    w = Client(moat, "paho-watch", protocol)
    w.subscribe("wills/#", 1)
    v = Client(moat, "paho-victim", protocol, will=("wills/v", b"gone", 1, False))
    v.kill()
    m = w.get()
    assert (m.topic, m.payload) == ("wills/v", b"gone")
    w.close()


def test_offline_queue_and_session_present(moat):
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    a = Client(moat, "paho-offline", clean=True, properties=props)
    a.subscribe("q/#", 2)
    a.close()
    b = Client(moat, "paho-pub")
    for qos in (0, 1, 2):
        b.publish(f"q/{qos}", f"m{qos}".encode(), qos)
    b.close()
    a = Client(moat, "paho-offline", clean=False, properties=props)
    assert a.session_present
    got = sorted((a.get().payload for _ in range(2)))
    assert got == [b"m1", b"m2"]
    a.close()


def test_shared_subscription_splits_messages(moat):
    a = Client(moat, "paho-share-a")
    b = Client(moat, "paho-share-b")
    a.subscribe("$share/g/work/+", 1)
    b.subscribe("$share/g/work/+", 1)
    p = Client(moat, "paho-share-p")
    for i in range(20):
        p.publish("work/x", str(i).encode(), 1)
    got = []
    for c in (a, b):
        while True:
            try:
                got.append((c, int(c.get(timeout=2).payload)))
            except queue.Empty:
                break
    assert sorted(i for _, i in got) == list(range(20)), "each message exactly once"
    assert {c for c, _ in got} == {a, b}, "both members get work"
    for c in (a, b, p):
        c.close()


def test_topic_alias_from_client(moat):
    c = Client(moat, "paho-alias")
    assert c.connack_properties.TopicAliasMaximum > 0
    c.subscribe("alias/#", 1)
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 1
    c.publish("alias/one", b"first", 1, properties=props)
    c.publish("", b"second", 1, properties=props)
    assert [(m.topic, m.payload) for m in (c.get(), c.get())] == [("alias/one", b"first"), ("alias/one", b"second")]
    c.close()


def test_subscription_options_and_identifiers(moat):
    c = Client(moat, "paho-opts")
    sprops = Properties(PacketTypes.SUBSCRIBE)
    sprops.SubscriptionIdentifier = 42
    c.subscribe("opts/nl", options=SubscribeOptions(qos=1, noLocal=True))
    c.subscribe("opts/id", options=SubscribeOptions(qos=1), properties=sprops)
    c.subscribe("opts/rap", options=SubscribeOptions(qos=1, retainAsPublished=True))
    c.publish("opts/nl", b"mine", 1)
    c.publish("opts/id", b"with id", 1)
    m = c.get()
    assert m.topic == "opts/id", "no-local message was delivered"
    assert m.properties.SubscriptionIdentifier == [42]
    c.publish("opts/rap", b"r", 1, retain=True)
    m = c.get()
    assert m.topic == "opts/rap" and m.retain
    c.publish("opts/rap", b"", 1, retain=True)
    c.get()
    c.close()


def test_request_response_and_payload_format(moat):
    c = Client(moat, "paho-rr")
    c.subscribe("rr/req", 1)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "rr/resp"
    props.CorrelationData = b"\x01\x02"
    props.PayloadFormatIndicator = 1
    props.ContentType = "text/plain"
    props.MessageExpiryInterval = 60
    c.publish("rr/req", "héllo".encode(), 1, properties=props)
    m = c.get()
    assert m.properties.ResponseTopic == "rr/resp"
    assert m.properties.CorrelationData == b"\x01\x02"
    assert m.properties.PayloadFormatIndicator == 1
    assert m.properties.ContentType == "text/plain"
    assert 0 < m.properties.MessageExpiryInterval <= 60
    c.close()


def test_unsubscribe_stops_delivery(moat):
    c = Client(moat, "paho-unsub")
    c.subscribe("u/a", 1)
    c.subscribe("u/b", 1)
    _, mid = c.c.unsubscribe("u/a")
    c.wait("unsuback")
    c.publish("u/a", b"no", 1)
    c.publish("u/b", b"yes", 1)
    assert c.get().payload == b"yes"
    c.none()
    c.close()


def test_dollar_topics_not_matched_by_wildcards(moat):
    c = Client(moat, "paho-dollar")
    c.subscribe("#", 1)
    c.publish("$TopicA/B", b"hidden", 1)
    c.publish("visible", b"v", 1)
    assert c.get().topic == "visible"
    c.none()
    c.close()


def test_session_expiry_interval(moat):
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 1
    c = Client(moat, "paho-exp", properties=props)
    c.subscribe("e", 1)
    c.close()
    # The behaviour under test is time passing: 1 s of expiry, checked after 2.5 s.
    time.sleep(2.5)
    again = Client(moat, "paho-exp", clean=False, properties=props)
    assert not again.session_present
    again.close()
    props.SessionExpiryInterval = 60
    c = Client(moat, "paho-exp2", properties=props)
    c.close()
    again = Client(moat, "paho-exp2", clean=False, properties=props)
    assert again.session_present
    again.close()
