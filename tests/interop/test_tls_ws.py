"""TLS, mutual TLS, WebSocket and secure WebSocket against `moat serve`, with certificates made
by `moat cert`, clients from paho-mqtt (websockets transport) and Debian's mosquitto-clients
(an OpenSSL-based client).
"""

import os
import queue
import re
import shutil
import ssl
import subprocess
import tempfile

import paho.mqtt.client as mqtt
import pytest

from test_paho import MOAT_BIN, TIMEOUT

TLS_CONFIG = """
[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
allow_anonymous = true

[[listeners]]
name = "tls"
kind = "tls"
bind = "127.0.0.1:0"
allow_anonymous = true
tls = {{ cert = "pki/server.pem", key = "pki/server.key" }}

[[listeners]]
name = "mtls"
kind = "tls"
bind = "127.0.0.1:0"
allow_anonymous = false
tls = {{ cert = "pki/server.pem", key = "pki/server.key", client_auth = "{mtls_auth}", client_ca = "pki/ca.pem" }}

[[listeners]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
allow_anonymous = true

[[listeners]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:0"
allow_anonymous = false
tls = {{ cert = "pki/server.pem", key = "pki/server.key", client_auth = "optional", client_ca = "pki/ca.pem" }}
"""


def moat(*args, cwd):
    r = subprocess.run([MOAT_BIN, *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"moat {' '.join(args)}: {r.stderr}"
    return r


class TlsMoat:
    def __init__(self, mtls_auth="required"):
        self.dir = tempfile.TemporaryDirectory()
        d = self.dir.name
        pki = os.path.join(d, "pki")
        moat("cert", "ca", "--out", pki, "--cn", "Interop CA", cwd=d)
        # Only "localhost": dialing 127.0.0.1 is then a name mismatch.
        moat("cert", "server", "--ca", pki, "--host", "localhost", "--out", pki, cwd=d)
        moat("cert", "client", "--ca", pki, "--cn", "device-1", "--out", pki, cwd=d)
        other = os.path.join(d, "other")
        moat("cert", "ca", "--out", other, "--cn", "Other CA", cwd=d)
        moat("cert", "client", "--ca", other, "--cn", "intruder", "--out", other, cwd=d)
        self.pki, self.other = pki, other
        path = os.path.join(d, "moat.toml")
        with open(path, "w") as f:
            f.write(TLS_CONFIG.format(mtls_auth=mtls_auth))
            f.write('\n[admin]\nbind = "127.0.0.1:0"\n')
        self.proc = subprocess.Popen([MOAT_BIN, "serve", "--config", path], cwd=d,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.ports = {}
        while len(self.ports) < 5:
            line = self.proc.stdout.readline()
            assert line, "moat serve exited"
            m = re.match(r"moat: listener (\S+) on \w+://[\d.]+:(\d+)", line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(TIMEOUT)
        self.dir.cleanup()


@pytest.fixture
def tlsmoat():
    m = TlsMoat()
    yield m
    m.stop()


def paho_client(client_id, protocol, transport="tcp"):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    return c


def connect_and_roundtrip(c, port, protocol):
    """Connects, subscribes, publishes QoS 1 to itself; returns (connack reason, payload or None)."""
    got = queue.Queue()
    connacks = queue.Queue()
    c.on_connect = lambda cl, u, f, rc, p: connacks.put(rc)
    c.on_message = lambda cl, u, m: got.put(m.payload)
    c.on_disconnect = lambda cl, u, f, rc, p: connacks.put(rc)
    c.connect("localhost", port, keepalive=30)
    c.loop_start()
    try:
        rc = connacks.get(timeout=TIMEOUT)
        if rc.is_failure:
            return rc, None
        c.subscribe("interop/#", qos=1)
        # The SUBACK precedes our message on this connection, so no wait is needed.
        c.publish("interop/x", b"over the wire", qos=1)
        return rc, got.get(timeout=TIMEOUT)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_websocket(tlsmoat, protocol):
    c = paho_client("ws-client", protocol, "websockets")
    rc, payload = connect_and_roundtrip(c, tlsmoat.ports["ws"], protocol)
    assert not rc.is_failure and payload == b"over the wire"


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_secure_websocket_with_client_certificate(tlsmoat, protocol):
    c = paho_client("device-1", protocol, "websockets")
    c.tls_set(ca_certs=os.path.join(tlsmoat.pki, "ca.pem"),
              certfile=os.path.join(tlsmoat.pki, "device-1.pem"),
              keyfile=os.path.join(tlsmoat.pki, "device-1.key"))
    rc, payload = connect_and_roundtrip(c, tlsmoat.ports["wss"], protocol)
    assert not rc.is_failure and payload == b"over the wire"


def test_secure_websocket_anonymous_is_not_authorized(tlsmoat):
    c = paho_client("anon", mqtt.MQTTv5, "websockets")
    c.tls_set(ca_certs=os.path.join(tlsmoat.pki, "ca.pem"))
    rc, _ = connect_and_roundtrip(c, tlsmoat.ports["wss"], mqtt.MQTTv5)
    assert rc.is_failure and rc.value == 0x87, rc


def test_tls_with_paho_and_wrong_ca(tlsmoat):
    c = paho_client("tls-client", mqtt.MQTTv5)
    c.tls_set(ca_certs=os.path.join(tlsmoat.pki, "ca.pem"))
    rc, payload = connect_and_roundtrip(c, tlsmoat.ports["tls"], mqtt.MQTTv5)
    assert payload == b"over the wire"
    bad = paho_client("tls-bad", mqtt.MQTTv5)
    bad.tls_set(ca_certs=os.path.join(tlsmoat.other, "ca.pem"))
    with pytest.raises(ssl.SSLCertVerificationError):
        bad.connect("localhost", tlsmoat.ports["tls"])


def mosquitto(tool, tlsmoat, port, *args):
    exe = shutil.which(tool)
    assert exe, f"{tool} not installed (scripts/test.sh installs mosquitto-clients)"
    return subprocess.run([exe, "-h", "localhost", "-p", str(port), *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


def mosquitto_roundtrip(tlsmoat, port, tls_args, topic):
    """mosquitto_sub waits for a retained message published by mosquitto_pub."""
    pub = mosquitto("mosquitto_pub", tlsmoat, port, *tls_args, "-t", topic, "-m", "hello", "-r", "-q", "1")
    if pub.returncode != 0:
        return pub
    sub = mosquitto("mosquitto_sub", tlsmoat, port, *tls_args, "-t", topic, "-C", "1", "-W", "10")
    mosquitto("mosquitto_pub", tlsmoat, port, *tls_args, "-t", topic, "-n", "-r")
    return sub


def test_mosquitto_clients_one_way_and_two_way(tlsmoat):
    ca = ["--cafile", os.path.join(tlsmoat.pki, "ca.pem")]
    r = mosquitto_roundtrip(tlsmoat, tlsmoat.ports["tls"], ca, "m/one-way")
    assert r.returncode == 0 and r.stdout.strip() == "hello", r.stderr
    dev = ca + ["--cert", os.path.join(tlsmoat.pki, "device-1.pem"), "--key", os.path.join(tlsmoat.pki, "device-1.key")]
    r = mosquitto_roundtrip(tlsmoat, tlsmoat.ports["mtls"], dev, "m/two-way")
    assert r.returncode == 0 and r.stdout.strip() == "hello", r.stderr
    # Required client certificate missing: refused.
    r = mosquitto("mosquitto_pub", tlsmoat, tlsmoat.ports["mtls"], *ca, "-t", "x", "-m", "y")
    assert r.returncode != 0
    # A client certificate from another CA: refused.
    intruder = ca + ["--cert", os.path.join(tlsmoat.other, "intruder.pem"), "--key", os.path.join(tlsmoat.other, "intruder.key")]
    r = mosquitto("mosquitto_pub", tlsmoat, tlsmoat.ports["mtls"], *intruder, "-t", "x", "-m", "y")
    assert r.returncode != 0
    # A wrong CA file: refused by the client.
    r = mosquitto("mosquitto_pub", tlsmoat, tlsmoat.ports["tls"], "--cafile", os.path.join(tlsmoat.other, "ca.pem"), "-t", "x", "-m", "y")
    assert r.returncode != 0


def test_mosquitto_name_mismatch_needs_insecure(tlsmoat):
    ca = ["--cafile", os.path.join(tlsmoat.pki, "ca.pem")]
    exe = shutil.which("mosquitto_pub")
    # The certificate names only "localhost"; 127.0.0.1 is not in it.
    r = subprocess.run([exe, "-h", "127.0.0.1", "-p", str(tlsmoat.ports["tls"]), *ca, "-t", "x", "-m", "y"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0, "a name mismatch must be refused"
    r = subprocess.run([exe, "-h", "127.0.0.1", "-p", str(tlsmoat.ports["tls"]), *ca, "--insecure", "-t", "x", "-m", "y"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
