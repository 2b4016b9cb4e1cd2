"""Third-party PJLink client (aiopjlink2 from PyPI) against avwarden's PJLink simulator.

Run by tests/it/pjlink.rs: `python pjlink_client.py HOST PORT PASSWORD`. The simulator is set up
by the test: standby, password set, lamps 12345 h and 678 h, inputs 11 12 31 32, name "Room A",
manufacturer "Panasonic", filter error in ERST. Exits non-zero on the first failed check.
"""

import asyncio
import sys

from aiopjlink import (
    PJClass,
    PJLink,
    PJLinkERR3,
    PJLinkPassword,
    Errors,
    Lamp,
    Power,
    Sources,
)


def check(what, got, want):
    if got != want:
        raise SystemExit(f"FAIL {what}: got {got!r}, want {want!r}")
    print(f"ok   {what}: {got!r}")


async def expect_raises(what, exc, coro):
    try:
        await coro
    except exc as e:
        print(f"ok   {what}: raised {type(e).__name__}")
        return
    raise SystemExit(f"FAIL {what}: no {exc.__name__}")


async def main(host, port, password):
    link = PJLink(address=host, port=port, password=password, timeout=10)

    check("power", await link.power.get(), Power.State.OFF)
    check(
        "lamps",
        await link.lamps.status(),
        [(12345, Lamp.State.OFF), (678, Lamp.State.OFF)],
    )
    errors = await link.errors.query()
    check("error filter", errors[Errors.Category.FILTER], Errors.Level.ERROR)
    check("error fan", errors[Errors.Category.FAN], Errors.Level.OK)
    check(
        "inputs",
        await link.sources.available(),
        [
            (Sources.Mode.RGB, "1"),
            (Sources.Mode.RGB, "2"),
            (Sources.Mode.DIGITAL, "1"),
            (Sources.Mode.DIGITAL, "2"),
        ],
    )
    check("name", await link.info.projector_name(), "Room A")
    check("manufacturer", await link.info.manufacturer_name(), "Panasonic")
    check("class", await link.info.pjlink_class(), PJClass.TWO)
    check("filter hours", await link.filter.hours(), 800)
    await expect_raises("input while in standby", PJLinkERR3, link.sources.get())

    await link.power.turn_on()
    check("power after on", await link.power.get(), Power.State.WARMING)
    check("lamp lit", (await link.lamps.status())[0][1], Lamp.State.ON)

    wrong = PJLink(address=host, port=port, password="not-the-password", timeout=10)
    await expect_raises("wrong password", PJLinkPassword, wrong.power.get())
    missing = PJLink(address=host, port=port, password=None, timeout=10)
    await expect_raises("missing password", PJLinkPassword, missing.power.get())

    print("pjlink client: all checks passed")


if __name__ == "__main__":
    h, p, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    asyncio.run(main(h, p, pw))
