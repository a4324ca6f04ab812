#!/usr/bin/env python3
"""A minimal receiver for `cpis-relay deliver --webhook`, for trying it out.

It verifies each request with the Standard Webhooks library
(`pip install standardwebhooks`), answers 204 when the signature is valid and
401 otherwise, and prints each request as received (method, path, headers,
body) to standard output. Dedupe on `webhook-id`: a notification may arrive
again after a crash, always with the same id.

    python3 webhook_receiver.py --secret-file webhook.secret --port 8808

This is a sketch: a real receiver listens on HTTPS, stores the notification
durably before it answers 2xx, and never prints personal data to a log.
"""

import argparse
import http.server
import json
import sys

from standardwebhooks import Webhook, WebhookVerificationError


def handler(webhook: Webhook):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            print(f"{self.command} {self.path} {self.request_version}")
            for name, value in self.headers.items():
                print(f"{name}: {value}")
            print()
            print(body.decode("utf-8", "replace"))
            try:
                notification = webhook.verify(body, dict(self.headers))
            except WebhookVerificationError as error:
                print(f"-> 401 signature not valid: {error}\n", flush=True)
                self.send_response(401)
                self.end_headers()
                return
            print(f"-> 204 signature valid; sequence {notification['sequence']}\n", flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret-file", required=True, help="file holding whsec_...")
    parser.add_argument("--port", type=int, default=8808)
    args = parser.parse_args()
    with open(args.secret_file) as secret:
        webhook = Webhook(secret.read().strip())
    server = http.server.HTTPServer(("127.0.0.1", args.port), handler(webhook))
    print(f"listening on http://127.0.0.1:{args.port}/", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
