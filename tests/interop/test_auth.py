"""Passwords, anonymous access, ACLs (groups, %u/%c, the wildcard-subscription subtlety),
identities bound to addresses, and reload, against `moat serve` with paho-mqtt (exact reason
codes) and mosquitto clients.
"""

import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import time

import paho.mqtt.client as mqtt
import pytest

from test_paho import MOAT_BIN, TIMEOUT

CONFIG = """
[[listeners]]
name = "open"
bind = "127.0.0.1:0"
allow_anonymous = true

[[listeners]]
name = "closed"
bind = "127.0.0.1:0"
allow_anonymous = false
auth = "password"

[auth]
password_file = "passwd"
acl_file = "acl.toml"
"""

ACL = """
default = "deny"

[groups]
sensors = ["dev-001"]

[bindings]
"carol" = ["10.9.0.0/16"]

[[rule]]
group = "sensors"
action = "publish"
permission = "allow"
topics = ["sensors/%u/#"]

[[rule]]
user = "alice"
action = "both"
permission = "allow"
topics = ["#"]

[[rule]]
all = true
action = "both"
permission = "allow"
topics = ["clients/%c/#"]

[[rule]]
user = "bob"
action = "subscribe"
permission = "allow"
topics = ["a/b"]

[[rule]]
anonymous = true
action = "both"
permission = "allow"
topics = ["public/#"]
"""

USERS = {"alice": "alice-pw", "dev-001": "dev-pw", "bob": "bob-pw", "carol": "carol-pw"}


class AuthMoat:
    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        d = self.dir.name
        data = os.path.join(d, "moat-data")
        os.makedirs(data)
        for user, pw in USERS.items():
            pwfile = os.path.join(d, "pw.txt")
            with open(pwfile, "w") as f:
                f.write(pw + "\n")
            r = subprocess.run([MOAT_BIN, "user", "add", user, "--file", os.path.join(data, "passwd"),
                                "--password-file", pwfile], capture_output=True, text=True, timeout=TIMEOUT)
            assert r.returncode == 0, r.stderr
        self.acl = os.path.join(data, "acl.toml")
        with open(self.acl, "w") as f:
            f.write(ACL)
        path = os.path.join(d, "moat.toml")
        with open(path, "w") as f:
            f.write(CONFIG)
            # The admin API on an ephemeral port (tests may overlap a broker's shutdown).
            f.write('\n[admin]\nbind = "127.0.0.1:0"\n')
        self.proc = subprocess.Popen([MOAT_BIN, "serve", "--config", path], cwd=d,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.ports = {}
        while len(self.ports) < 2:
            line = self.proc.stdout.readline()
            assert line, "moat serve exited"
            m = re.match(r"moat: listener (\S+) on \w+://[\d.]+:(\d+)", line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(TIMEOUT)
        self.dir.cleanup()


@pytest.fixture(scope="module")
def auth():
    m = AuthMoat()
    yield m
    m.stop()


class C:
    """A paho client that records CONNACK, SUBACK, PUBACK codes and messages."""

    def __init__(self, port, client_id, user=None, pw=None, protocol=mqtt.MQTTv5):
        self.events = queue.Queue()
        self.messages = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if user is not None:
            self.c.username_pw_set(user, pw)
        self.c.on_connect = lambda cl, u, f, rc, p: self.events.put(("connack", rc))
        self.c.on_subscribe = lambda cl, u, mid, rcs, p: self.events.put(("suback", rcs))
        self.c.on_publish = lambda cl, u, mid, rc, p: self.events.put(("puback", rc))
        self.c.on_message = lambda cl, u, m: self.messages.put(m)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.rc = self.wait("connack")

    def wait(self, kind):
        deadline = time.monotonic() + TIMEOUT
        while True:
            ev = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if ev[0] == kind:
                return ev[1]

    def subscribe(self, topic, qos=1):
        self.c.subscribe(topic, qos=qos)
        return self.wait("suback")[0]

    def publish(self, topic, payload=b"x", qos=1):
        self.c.publish(topic, payload, qos=qos)
        return self.wait("puback")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


# paho reports v3 return codes 4 and 5 as the v5 codes 0x86 and 0x87.
@pytest.mark.parametrize("protocol,bad,denied", [(mqtt.MQTTv5, 0x86, 0x87), (mqtt.MQTTv311, 0x86, 0x87)])
def test_passwords_and_anonymous(auth, protocol, bad, denied):
    ok = C(auth.ports["closed"], "a1", "alice", "alice-pw", protocol)
    assert not ok.rc.is_failure
    ok.close()
    for user, pw in [("alice", "wrong"), ("nobody", "whatever")]:
        c = C(auth.ports["closed"], "a2", user, pw, protocol)
        assert c.rc.value == bad, (user, c.rc)
        c.c.loop_stop()
    anon = C(auth.ports["closed"], "anon", protocol=protocol)
    assert anon.rc.value == denied, anon.rc
    anon.c.loop_stop()
    open_anon = C(auth.ports["open"], "anon2", protocol=protocol)
    assert not open_anon.rc.is_failure
    open_anon.close()


def test_bound_identity_from_another_address(auth):
    c = C(auth.ports["closed"], "carol", "carol", "carol-pw")
    assert c.rc.value == 0x87, c.rc
    c.c.loop_stop()


def test_group_and_substitution_rules(auth):
    watcher = C(auth.ports["closed"], "watch", "alice", "alice-pw")
    assert watcher.subscribe("sensors/#").value == 1
    dev = C(auth.ports["closed"], "dev-c", "dev-001", "dev-pw")
    assert not dev.publish("sensors/dev-001/temp", b"21").is_failure
    assert dev.publish("sensors/dev-002/temp", b"spoof").value == 0x87
    got = watcher.messages.get(timeout=TIMEOUT)
    assert (got.topic, got.payload) == ("sensors/dev-001/temp", b"21")
    # %c: a client may use its own subtree only.
    assert dev.subscribe("clients/dev-c/#").value == 1
    assert dev.subscribe("clients/other/#").value == 0x87
    # A round trip shows the spoofed message never reached the watcher.
    assert not watcher.publish("sensors/marker", b"m").is_failure
    assert watcher.messages.get(timeout=TIMEOUT).topic == "sensors/marker"
    dev.close()
    watcher.close()


@pytest.mark.parametrize("protocol,refused", [(mqtt.MQTTv5, 0x87), (mqtt.MQTTv311, 0x80)])
def test_wildcard_subscription_needs_every_topic_allowed(auth, protocol, refused):
    bob = C(auth.ports["closed"], "bob-c", "bob", "bob-pw", protocol)
    assert bob.subscribe("a/b").value == 1
    assert bob.subscribe("a/#").value == refused
    assert bob.subscribe("a/+").value == refused
    bob.close()


def test_mosquitto_clients(auth):
    exe = shutil.which("mosquitto_pub")
    assert exe, "mosquitto-clients not installed"
    port = str(auth.ports["closed"])
    r = subprocess.run([exe, "-h", "127.0.0.1", "-p", port, "-u", "alice", "-P", "alice-pw", "-t", "x", "-m", "y"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([exe, "-h", "127.0.0.1", "-p", port, "-u", "alice", "-P", "nope", "-t", "x", "-m", "y"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0 and "bad user name or password" in r.stderr.lower(), r.stderr
    r = subprocess.run([exe, "-h", "127.0.0.1", "-p", port, "-t", "x", "-m", "y"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0 and "not authori" in r.stderr.lower(), r.stderr


def test_acl_reload_keeps_clients(auth):
    bob = C(auth.ports["closed"], "bob-r", "bob", "bob-pw")
    assert bob.publish("reload/x").value == 0x87
    with open(auth.acl, "a") as f:
        f.write('\n[[rule]]\nuser = "bob"\naction = "publish"\npermission = "allow"\ntopics = ["reload/#"]\n')
    auth.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + TIMEOUT
    while bob.publish("reload/x").value == 0x87:
        assert time.monotonic() < deadline, "the new rule never took effect"
        time.sleep(0.1)
    # A broken file is refused and the rules in force stay.
    with open(auth.acl, "a") as f:
        f.write("\n[[rule]]\nuser = \"bob\"\n")
    auth.proc.send_signal(signal.SIGHUP)
    assert not bob.publish("reload/y").is_failure
    bob.close()
