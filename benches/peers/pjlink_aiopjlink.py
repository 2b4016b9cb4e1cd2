"""The same poll through aiopjlink2 (PyPI), the third-party baseline of benches/poll_cpu.rs.

`python pjlink_aiopjlink.py HOST PORTS_FILE PASSWORD` (PASSWORD may be empty). One `PJLink`
object per projector, POWR, ERST and LAMP once a second each; aiopjlink2 opens a connection
per command (its design), which is part of what it costs. On SIGUSR1 it prints
`polls N errors M` (counts since it started); SIGTERM ends it.
"""

import asyncio
import signal
import sys

from aiopjlink import PJLink, PJLinkException


async def poll_forever(link, stats):
    while True:
        try:
            await link.power.get()
            await link.errors.query()
            await link.lamps.status()
            stats["polls"] += 1
        except (OSError, asyncio.TimeoutError, PJLinkException):
            stats["errors"] += 1
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
    links = [PJLink(address=host, port=p, password=password or None, timeout=10) for p in ports]
    tasks = [asyncio.create_task(poll_forever(link, stats)) for link in links]
    print("ready", flush=True)
    await stop.wait()
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
