#!/usr/bin/env python3
"""SMTP sink for the notification tests (PyPI aiosmtpd): STARTTLS required, AUTH (PLAIN/LOGIN) required after
TLS for one user, each accepted message written to OUT_DIR/<n>.eml (written to a temporary name, then renamed).
Prints "listening on PORT" once it accepts connections.

usage: smtp_sink.py PORT CERT KEY USER PASSWORD OUT_DIR
"""

import itertools
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, out):
        self.out = out
        self.n = itertools.count()

    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(self.out, "%04d.eml" % next(self.n))
        with open(path + ".tmp", "wb") as f:
            f.write(b"X-Sink-Tls: " + (b"yes" if session.ssl else b"no") + b"\r\n")
            f.write(b"X-Sink-Auth: " + (b"yes" if session.authenticated else b"no") + b"\r\n")
            f.write(b"X-Sink-Rcpt: " + ",".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 OK"


def main():
    port, cert, key, user, password, out = sys.argv[1:7]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() \
            and auth_data.password == password.encode()
        return AuthResult(success=ok)

    controller = Controller(
        Sink(out),
        hostname="127.0.0.1",
        port=int(port),
        tls_context=ctx,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    print("listening on %s" % port, flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
