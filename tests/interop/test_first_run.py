"""The README's quick start, as a new user runs it: `moat serve` in an empty folder, then
`moat cert client`, then mosquitto clients over mqtts (8883) and a WebSocket client over wss
(8084). Uses the default ports, so it needs 1883, 8883 and 8084 free on this machine.
"""

import os
import queue
import shutil
import socket
import subprocess
import tempfile

import paho.mqtt.client as mqtt

from test_paho import MOAT_BIN, TIMEOUT


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_first_run_quick_start():
    for port in (1883, 8883, 8084):
        assert port_free(port), f"port {port} is in use; the quick-start test needs the default ports"
    d = tempfile.mkdtemp()
    serve = subprocess.Popen([MOAT_BIN, "serve"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("moat: data in" in l for l in lines):
            line = serve.stdout.readline()
            assert line, f"moat serve stopped: {serve.stderr.read()}"
            lines.append(line)
        text = "".join(lines)
        assert "moat-data/pki/ca.pem" in text
        assert "moat cert client --ca moat-data/pki --cn" in text
        assert "mosquitto_sub" in text and "mqttx" in text
        assert oct(os.stat(os.path.join(d, "moat-data/pki/ca.key")).st_mode & 0o777) == "0o600"

        r = subprocess.run([MOAT_BIN, "cert", "client", "--ca", "moat-data/pki", "--cn", "device1"],
                           cwd=d, capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
        tls = ["--cafile", "moat-data/pki/ca.pem", "--cert", "device1.pem", "--key", "device1.key"]

        # mosquitto_pub -> mosquitto_sub over mqtts, both with client certificates.
        sub = subprocess.Popen([shutil.which("mosquitto_sub"), "-h", "localhost", "-p", "8883", *tls,
                                "-t", "qs/#", "-v", "-C", "1", "-W", "20"],
                               cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # A retained message reaches the subscriber whenever its subscription lands.
        r = subprocess.run([shutil.which("mosquitto_pub"), "-h", "localhost", "-p", "8883", *tls,
                            "-t", "qs/hello", "-m", "world", "-r", "-q", "1"],
                           cwd=d, capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
        out, err = sub.communicate(timeout=TIMEOUT)
        assert out.strip() == "qs/hello world", err

        # The same over wss with a WebSocket client and the same kind of certificate.
        got = queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="device1", transport="websockets")
        c.ws_set_options(path="/mqtt")
        c.tls_set(ca_certs=os.path.join(d, "moat-data/pki/ca.pem"), certfile=os.path.join(d, "device1.pem"),
                  keyfile=os.path.join(d, "device1.key"))
        c.on_connect = lambda cl, u, f, rc, p: got.put(("connack", rc))
        c.on_message = lambda cl, u, m: got.put(("msg", m.payload))
        c.connect("localhost", 8084)
        c.loop_start()
        kind, rc = got.get(timeout=TIMEOUT)
        assert kind == "connack" and not rc.is_failure, rc
        c.subscribe("qs/hello", qos=1)
        kind, payload = got.get(timeout=TIMEOUT)
        assert (kind, payload) == ("msg", b"world")
        c.disconnect()
        c.loop_stop()

        # Anonymous TLS clients are refused with "not authorized".
        r = subprocess.run([shutil.which("mosquitto_pub"), "-h", "localhost", "-p", "8883",
                            "--cafile", "moat-data/pki/ca.pem", "-t", "x", "-m", "y"],
                           cwd=d, capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode != 0 and "not authori" in r.stderr, r.stderr

        # A second start reuses what the first made.
        serve.terminate()
        serve.wait(TIMEOUT)
        before = open(os.path.join(d, "moat-data/pki/ca.pem")).read()
        serve = subprocess.Popen([MOAT_BIN, "serve"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        while not any("moat: data in" in l for l in lines):
            line = serve.stdout.readline()
            assert line, f"moat serve stopped: {serve.stderr.read()}"
            lines.append(line)
        assert "local CA reused" in "".join(lines)
        assert open(os.path.join(d, "moat-data/pki/ca.pem")).read() == before
    finally:
        serve.terminate()
        serve.wait(TIMEOUT)
        shutil.rmtree(d, ignore_errors=True)
