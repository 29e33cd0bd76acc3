"""Issue 26, finding 11 (the agent's side): the agent's HTTP download followed a redirect from https to plain http,
so whoever could answer the https URL (or sit on the path of the http one) got the model's bytes and its fetch onto
an unencrypted link. A real TLS server with a CA made here, redirecting to a real http server holding the file."""

from __future__ import annotations

import hashlib
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_http_models import Origin
from test_security import make_pki

from agent.fetch.over_http import HttpDownload, HttpSettings, HttpUnavailable


def redirector(location: str, pki: dict) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["cert"], pki["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_an_https_download_never_follows_a_redirect_to_http(tmp_path):
    data = b"model bytes " * 1000
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "origin").mkdir()
    (tmp_path / "origin" / sha).write_bytes(data)
    plain = Origin(tmp_path / "origin")
    pki = make_pki(tmp_path)
    tls = redirector(plain.url, pki)
    url = f"https://127.0.0.1:{tls.server_address[1]}/{sha}"
    try:
        download = HttpDownload(url, len(data), HttpSettings(timeout_s=5, ca_file=str(pki["ca"])), threading.Event())
        with open(tmp_path / "part", "ab") as out, pytest.raises(HttpUnavailable, match="from https to http"):
            download.run(out, 0, hashlib.sha256(), lambda done, total: None, lambda n: None)
        print(f"the plain server saw {len(plain.log)} request(s)")
        assert plain.log == []  # not one request went out unencrypted
        assert (tmp_path / "part").stat().st_size == 0
    finally:
        tls.shutdown()
        plain.close()
