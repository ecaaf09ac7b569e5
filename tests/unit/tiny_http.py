"""Real little HTTP servers on loopback for the transport and push tests."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Recorder:
    """Answers every request with `answer(method, path, body)` -> (status, dict)
    and records (method, path, body, headers, client port) in arrival order."""

    def __init__(
        self,
        answer=None,
        *,
        tls: tuple[str, str] | None = None,
        close_silently: bool = False,
        unix_path: str | None = None,
    ):
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        self.answer = answer or (lambda method, path, body: (200, {"message": "ok"}))
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                port = self.client_address[1] if isinstance(self.client_address, tuple) else 0
                with recorder.lock:
                    recorder.calls.append((self.command, self.path, body, dict(self.headers), port))
                status, answer = recorder.answer(self.command, self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                # Keep-alive promised, then dropped: a stale kept connection.
                self.close_connection = close_silently

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, *args):
                pass

        if unix_path:
            import socketserver

            class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
                daemon_threads = True

                def get_request(self):
                    conn, _ = self.socket.accept()
                    return conn, ("unix", 0)

            self.httpd = UnixServer(unix_path, Handler)
            self.url = "http://localhost"
        else:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.httpd.daemon_threads = True
            scheme = "http"
            if tls:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(*tls)
                self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
                scheme = "https"
            self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def paths(self, method: str | None = None) -> list[str]:
        with self.lock:
            return [c[1] for c in self.calls if method in (None, c[0])]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Mute:
    """A listening socket nobody answers on: the kernel accepts connections
    (as for a SIGSTOPped agent), no request ever gets an answer."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


def closed_port_url() -> str:
    """A loopback URL with nothing listening (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def self_signed(dir_: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir_ / "cert.pem", dir_ / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def wait_for(pred, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
