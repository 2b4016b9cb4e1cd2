"""A persistent PJLink poller in plain asyncio: the Python baseline of benches/poll_cpu.rs.

`python pjlink_asyncio.py HOST PORTS_FILE PASSWORD` (PASSWORD may be empty). One kept session
per projector (greeting, MD5 digest on the first command when the projector asks), then
POWR ?, ERST ? and LAMP ? once a second on each. On SIGUSR1 it prints `polls N errors M` (counts since it
started), so the benchmark divides its CPU by the polls it really made; SIGTERM ends it.
"""

import asyncio
import hashlib
import signal
import sys

QUERIES = (b"POWR", b"ERST", b"LAMP")


class Session:
    def __init__(self, host, port, password):
        self.host, self.port, self.password = host, port, password
        self.reader = self.writer = None
        self.digest = b""

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        greeting = (await self.reader.readuntil(b"\r")).rstrip(b"\r")
        self.digest = b""
        if greeting.startswith(b"PJLINK 1 "):
            random = greeting[9:]
            self.digest = hashlib.md5(random + self.password.encode()).hexdigest().encode()
        elif greeting != b"PJLINK 0":
            raise ConnectionError(f"unexpected greeting {greeting!r}")

    async def query(self, command):
        self.writer.write(self.digest + b"%1" + command + b" ?\r")
        self.digest = b""
        line = await self.reader.readuntil(b"\r")
        if line[2:6].upper() != command:
            raise ConnectionError(f"unexpected reply {line!r}")
        return line[7:-1]


async def poll_forever(session, stats):
    while True:
        try:
            if session.writer is None:
                await session.connect()
            for c in QUERIES:
                await session.query(c)
            stats["polls"] += 1
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            stats["errors"] += 1
            if session.writer is not None:
                session.writer.close()
            session.writer = None
        await asyncio.sleep(1.0)


async def main(host, ports_file, password):
    with open(ports_file) as f:
        ports = [int(p) for p in f.read().split()]
    stats = {"polls": 0, "errors": 0}
    stop = asyncio.Event()

    def report():
        print(f"polls {stats['polls']} errors {stats['errors']}", flush=True)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, report)
    tasks = [asyncio.create_task(poll_forever(Session(host, p, password), stats)) for p in ports]
    print("ready", flush=True)
    await stop.wait()
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
