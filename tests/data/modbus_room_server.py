"""A Modbus RTU room controller served by pymodbus: the third-party slave of avwarden's
interop test (tests/it/modbus.rs). Register map: devices/hvac/avwarden-sim-modbus.toml
(protocols.md 5.1): input 0 room temperature x10, input 1 running state, input 2 alarm bits,
holding 0 setpoint x10, holding 1 mode, holding 2 fan, coil 0 on/off.

usage: modbus_room_server.py <serial port> <baud>

Prints one JSON line per write the master makes: {"fc": 6, "address": 0, "values": [220]}.
"""

import asyncio
import json
import logging
import sys

from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice


async def log_writes(function_code, start_address, address, count, current_registers, set_values):
    if set_values is not None:
        print(json.dumps({"fc": function_code, "address": address,
                          "values": [int(v) for v in set_values]}), flush=True)
    return None


async def main(port, baud):
    device = SimDevice(
        id=1,
        simdata=(
            [SimData(0, values=[True], datatype=DataType.BITS)],           # coils: on
            [SimData(0, values=[False], datatype=DataType.BITS)],          # discrete inputs
            [SimData(0, values=[225, 2, 0], datatype=DataType.REGISTERS)],  # 22.5 °C, cool, auto
            [SimData(0, values=[241, 2, 0], datatype=DataType.REGISTERS)],  # 24.1 °C, cooling, ok
        ),
        action=log_writes,
    )
    server = ModbusSerialServer(device, framer=FramerType.RTU, port=port, baudrate=baud,
                                bytesize=8, parity="N", stopbits=1)
    await server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
