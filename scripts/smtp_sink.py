"""A real SMTP server for tests: accepts every message on 127.0.0.1:<port> and writes it,
as received, to <dir>/<n>.eml (atomically: written under a temporary name, then renamed).

    python smtp_sink.py <port> <dir>
"""

import os
import pathlib
import signal
import sys
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out: pathlib.Path):
        self.out = out
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            number = self.count
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode()
        temporary = self.out / f".{number:06d}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, self.out / f"{number:06d}.eml")
        return "250 Message accepted"


def main() -> None:
    port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    controller = Controller(Sink(out), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
