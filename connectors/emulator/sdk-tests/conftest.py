"""Fixtures of the third-party client suite.

`run.sh` starts the emulators (`rebuy emulate bitrix24`, `rebuy emulate amocrm`) on
127.0.0.1 and names the files holding their banners in REBUY_SDK_B24_BANNER and
REBUY_SDK_AMO_BANNER; the fixtures read the addresses, credentials and record counts from
there. The clients are used as published: nothing here patches them.

b24pysdk only speaks https (it builds `https://{domain}/rest/...`), so a small TLS proxy on
127.0.0.1 with a throwaway self-signed certificate stands in front of the Bitrix24 emulator
for it, and REQUESTS_CA_BUNDLE makes `requests` trust that certificate.
"""

import os
import re
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass

import pytest


@dataclass
class Emulator:
    base_url: str
    banner: str

    def line(self, label: str) -> str:
        m = re.search(rf"^\s*{re.escape(label)}:\s*(.+)$", self.banner, re.M)
        assert m, f"no {label!r} line in the banner:\n{self.banner}"
        return m.group(1).strip()

    def count(self, what: str) -> int:
        m = re.search(rf"(\d+) {what}\b", self.line("data"))
        assert m, self.line("data")
        return int(m.group(1))


def _emulator(env: str) -> Emulator:
    path = os.environ.get(env)
    if not path:
        pytest.fail(f"{env} is not set: run the suite with run.sh")
    with open(path, encoding="utf-8") as f:
        banner = f.read()
    m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", banner)
    assert m, banner
    return Emulator(m.group(1), banner)


@pytest.fixture(scope="session")
def b24() -> Emulator:
    return _emulator("REBUY_SDK_B24_BANNER")


@pytest.fixture(scope="session")
def amo() -> Emulator:
    return _emulator("REBUY_SDK_AMO_BANNER")


@pytest.fixture(scope="session")
def b24_webhook(b24: Emulator) -> str:
    url = b24.line("webhook")
    assert url.startswith(b24.base_url + "/rest/"), url
    return url


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class TlsProxy:
    """Terminates TLS on 127.0.0.1 and forwards the bytes to a plain-HTTP upstream."""

    def __init__(self, upstream: tuple[str, int], cert: str, key: str):
        self.upstream = upstream
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.ctx.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(self.upstream)
        except OSError:
            raw.close()
            return
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.fixture(scope="session")
def b24_tls_domain(b24: Emulator, tmp_path_factory) -> str:
    """`127.0.0.1:PORT` of a TLS proxy in front of the Bitrix24 emulator."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    host, port = b24.base_url.removeprefix("http://").split(":")
    proxy = TlsProxy((host, int(port)), cert, key)
    old = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = cert
    yield f"127.0.0.1:{proxy.port}"
    proxy.close()
    if old is None:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)
    else:
        os.environ["REQUESTS_CA_BUNDLE"] = old
