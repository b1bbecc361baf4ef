"""Development SMTP sink: captures every message to a file.

    python -m taskapp.smtp_sink --port 2525 --out DIR [--host 127.0.0.1]

Each accepted message is written as DIR/<n>-<timestamp>.eml (raw RFC 5322
message, n = 6-digit counter). Runs until interrupted (SIGINT/SIGTERM).
"""
import argparse
import itertools
import os
import signal
import sys
import threading
import time

from aiosmtpd.controller import Controller


class FileHandler:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.counter = itertools.count(1)
        self.lock = threading.Lock()
        os.makedirs(out_dir, exist_ok=True)

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            n = next(self.counter)
        name = os.path.join(self.out_dir, f"{n:06d}-{int(time.time() * 1000)}.eml")
        tmp = name + ".tmp"
        with open(tmp, "wb") as f:
            f.write(f"X-Envelope-From: {envelope.mail_from}\r\n".encode())
            f.write(f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode())
            f.write(envelope.original_content or envelope.content)
        os.replace(tmp, name)  # atomic: readers never see partial files
        return "250 Message accepted for delivery"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m taskapp.smtp_sink")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("--out", required=True, help="directory for captured .eml files")
    a = ap.parse_args(argv)
    controller = Controller(FileHandler(a.out), hostname=a.host, port=a.port)
    controller.start()
    print(f"smtp sink listening on {a.host}:{a.port}, writing to {a.out}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
