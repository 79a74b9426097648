"""A real SMTP server (aiosmtpd) for hexwatch's e-mail tests.

Every message it receives is written to OUT_DIR as one JSON file with the
envelope sender, the envelope recipients and the raw message. It prints
"ready" once it accepts connections.

    python3 smtp_sink.py OUT_DIR PORT                          # plain, no STARTTLS offered
    python3 smtp_sink.py OUT_DIR PORT starttls CERT KEY        # STARTTLS, required
    python3 smtp_sink.py OUT_DIR PORT implicit CERT KEY        # TLS from the first byte
"""

import json
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.out_dir, "%04d.json" % self.count)
        with open(path + ".tmp", "w") as f:
            json.dump(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "data": envelope.content.decode("utf-8", "replace"),
                },
                f,
            )
        os.rename(path + ".tmp", path)
        return "250 OK"


def main():
    out_dir, port = sys.argv[1], int(sys.argv[2])
    kwargs = {}
    if len(sys.argv) > 3:
        mode, cert, key = sys.argv[3], sys.argv[4], sys.argv[5]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if mode == "starttls":
            kwargs = {"tls_context": context, "require_starttls": True}
        else:
            kwargs = {"ssl_context": context}
    controller = Controller(Sink(out_dir), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
