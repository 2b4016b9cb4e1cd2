"""A local SMTP receiver for tests/it/notify.rs, independent of avwarden's code.

aiosmtpd on 127.0.0.1 and a free port. Prints `port <n>` once it listens, then one JSON line
per message received: {"mail_from", "rcpt_tos", "subject", "message_id", "body"}, decoded
by Python's own e-mail parser. Runs until stdin closes.
"""

import asyncio
import email
import email.policy
import json
import sys

from aiosmtpd.smtp import SMTP


class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        print(
            json.dumps(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "subject": str(msg["subject"]),
                    "message_id": str(msg["message-id"]),
                    "body": msg.get_content(),
                }
            ),
            flush=True,
        )
        return "250 Message accepted for delivery"


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Handler()), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    # The test closes stdin when it is done (or dies): stop then.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


asyncio.run(main())
