"""pymodbus as the Modbus RTU master reading and writing avwarden's room-controller simulator
(tests/it/modbus.rs). Register map: devices/hvac/avwarden-sim-modbus.toml.

usage: modbus_room_client.py <serial port> <baud>

Prints one JSON object with what it read, and the exception code it got for an unmapped
register.
"""

import asyncio
import json
import logging
import sys

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerType


def regs(r):
    if r.isError():
        return {"exception": getattr(r, "exception_code", None)}
    return r.registers


async def main(port, baud):
    client = AsyncModbusSerialClient(port, framer=FramerType.RTU, baudrate=baud, bytesize=8,
                                     parity="N", stopbits=1, timeout=2, retries=1)
    if not await client.connect():
        print(json.dumps({"error": "cannot open " + port}))
        return 1
    out = {}
    out["input"] = regs(await client.read_input_registers(0, count=3, device_id=1))
    out["holding"] = regs(await client.read_holding_registers(0, count=3, device_id=1))
    out["coil"] = (await client.read_coils(0, count=1, device_id=1)).bits[0]
    # Setpoint 23.0 °C with FC06, mode heat with FC16, switch on with FC05.
    out["write_setpoint"] = not (await client.write_register(0, 230, device_id=1)).isError()
    out["write_mode"] = not (await client.write_registers(1, [1], device_id=1)).isError()
    out["write_coil"] = not (await client.write_coil(0, True, device_id=1)).isError()
    out["holding_after"] = regs(await client.read_holding_registers(0, count=3, device_id=1))
    out["coil_after"] = (await client.read_coils(0, count=1, device_id=1)).bits[0]
    out["unmapped"] = regs(await client.read_holding_registers(40, count=1, device_id=1))
    out["out_of_range"] = regs(await client.write_register(0, 990, device_id=1))
    client.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]))))
