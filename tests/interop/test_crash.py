"""The broker killed with SIGKILL while clients publish QoS 1 and QoS 2 to an offline persistent
session: after a restart on the same data dir, every acknowledged message is delivered (QoS 1 at
least once, QoS 2 exactly once), and retained messages and subscriptions are back.
"""

import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from test_paho import MOAT_BIN, TIMEOUT

CONFIG = (
    '[[listeners]]\nname = "local"\nbind = "127.0.0.1:{port}"\nallow_anonymous = true\n'
    '[admin]\nbind = "127.0.0.1:0"\n'
)


def start(d, port=0):
    path = os.path.join(d, "moat.toml")
    with open(path, "w") as f:
        f.write(CONFIG.format(port=port))
    proc = subprocess.Popen([MOAT_BIN, "serve", "--config", path], cwd=d,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(r":(\d+)$", line.strip())
    assert m, f"no listener line: {line!r}"
    return proc, int(m.group(1))


def session_props():
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 3600
    return p


def client(client_id, port, clean):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: connected.set()
    c.connect("127.0.0.1", port, clean_start=clean, properties=session_props())
    c.loop_start()
    assert connected.wait(TIMEOUT), "no CONNACK"
    return c


def publisher(port, qos, acked, stop, first_seq):
    """Publishes sequence numbers from `first_seq` until the broker dies or `stop` is set;
    records the acknowledged ones. Drives the client's network loop itself, so nothing
    reconnects behind the test's back."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"crash-pub-{qos}-{first_seq}",
                    protocol=mqtt.MQTTv5)
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: connected.set()
    mids = {}

    def on_publish(cl, u, mid, rc, p):
        seq = mids.pop(mid, None)
        if seq is not None and not rc.is_failure:
            acked.add(seq)

    c.on_publish = on_publish
    c.max_inflight_messages_set(50)
    c.connect("127.0.0.1", port)
    deadline = time.monotonic() + TIMEOUT
    while not connected.is_set():
        if time.monotonic() > deadline or c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
            return
    for seq in range(first_seq, first_seq + 5000):
        if stop.is_set():
            break
        info = c.publish(f"crash/q{qos}", str(seq).encode(), qos=qos)
        mids[info.mid] = seq
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_QUEUE_SIZE):
            break
        if c.loop(0.001) != mqtt.MQTT_ERR_SUCCESS:
            break


def test_kill_minus_9_loses_nothing_acknowledged():
    d = tempfile.mkdtemp()
    proc, port = start(d)
    try:
        sub = client("crash-sub", port, clean=True)
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.subscribe("crash/#", qos=2)
        assert subscribed.wait(TIMEOUT)
        keep = client("retainer", port, clean=True)
        keep.publish("crash-retained/x", b"still here", qos=1, retain=True).wait_for_publish(TIMEOUT)
        keep.disconnect()
        sub.disconnect()
        sub.loop_stop()

        acked = {1: set(), 2: set()}
        for cycle in range(3):
            stop = threading.Event()
            threads = [threading.Thread(target=publisher, args=(port, q, acked[q], stop, cycle * 100000))
                       for q in (1, 2)]
            before = len(acked[1]) + len(acked[2])
            for t in threads:
                t.start()
            # Kill under load: once messages are being acknowledged, at a random moment.
            deadline = time.monotonic() + TIMEOUT
            while len(acked[1]) + len(acked[2]) < before + 20:
                assert time.monotonic() < deadline, "nothing was acknowledged before the kill"
                time.sleep(0.01)
            time.sleep(random.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(TIMEOUT)
            stop.set()
            for t in threads:
                t.join(TIMEOUT)
            proc, port2 = start(d, port)
            assert port2 == port

        # Everything acknowledged across the three crashes must arrive.
        got = {1: [], 2: []}
        lock = threading.Lock()

        def on_message(cl, u, m):
            with lock:
                got[int(m.topic[-1])].append(int(m.payload))

        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crash-sub", protocol=mqtt.MQTTv5)
        sub.on_message = on_message
        present = []
        sub.on_connect = lambda cl, u, f, rc, p: present.append(f.session_present)
        sub.connect("127.0.0.1", port, clean_start=False, properties=session_props())
        sub.loop_start()
        deadline = time.monotonic() + 120
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            with lock:
                n = len(got[1]) + len(got[2])
            if n != last:
                last, quiet_since = n, time.monotonic()
            elif time.monotonic() - quiet_since > 3:
                break
            time.sleep(0.1)
        assert present == [True], "the persistent session was lost"
        q1, q2 = set(got[1]), got[2]
        missing1 = acked[1] - q1
        missing2 = acked[2] - set(q2)
        assert not missing1, f"{len(missing1)} acknowledged QoS 1 messages lost, e.g. {sorted(missing1)[:5]}"
        assert not missing2, f"{len(missing2)} acknowledged QoS 2 messages lost, e.g. {sorted(missing2)[:5]}"
        assert len(q2) == len(set(q2)), "a QoS 2 message was delivered twice"

        # The subscription is back: a new message arrives; the retained message too.
        r = client("after", port, clean=True)
        r.publish("crash/q1", b"-1", qos=1).wait_for_publish(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while -1 not in got[1]:
            assert time.monotonic() < deadline, "subscription lost"
            time.sleep(0.05)
        retained = []
        r.on_message = lambda cl, u, m: retained.append(m.payload)
        r.subscribe("crash-retained/#", qos=1)
        deadline = time.monotonic() + TIMEOUT
        while not retained:
            assert time.monotonic() < deadline, "retained message lost"
            time.sleep(0.05)
        assert retained == [b"still here"]
        r.disconnect()
        sub.disconnect()
        print(f"acknowledged: qos1={len(acked[1])} qos2={len(acked[2])}; delivered qos1={len(got[1])} qos2={len(q2)}")
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
