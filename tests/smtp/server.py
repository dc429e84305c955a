"""A real SMTP server for the email plugin's tests and benchmarks (aiosmtpd).

    python3 tests/smtp/server.py --port P --user U --password W --dir D [--delay S]

Listens on 127.0.0.1:P, offers AUTH PLAIN and LOGIN without TLS, refuses
mail from a session that did not log in as U/W (530), and writes each
message it accepts to D as <n>.eml (the raw message, with its envelope
recipients in an X-Rcpt-To header). --delay makes every message take S
seconds to accept, like a slow server. Prints "ready" once it listens;
stops on SIGTERM or SIGINT.
"""

import argparse
import asyncio
import itertools
import logging
import os
import signal
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    # A login without TLS is what these tests want: no warning about it.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    counter = itertools.count(1)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == args.user
            and auth_data.password.decode() == args.password
        )
        # handled=False: aiosmtpd answers 535 itself on a failure.
        return AuthResult(success=ok, handled=False)

    class Keep:
        async def handle_DATA(self, server, session, envelope):
            if args.delay:
                await asyncio.sleep(args.delay)
            n = next(counter)
            path = os.path.join(args.dir, f"{n}.eml")
            with open(path + ".part", "wb") as f:
                f.write(b"X-Rcpt-To: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
                f.write(envelope.original_content)
            os.rename(path + ".part", path)
            return "250 Message accepted"

    controller = Controller(
        Keep(),
        hostname="127.0.0.1",
        port=args.port,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
