"""The same burst through qq-botpy 1.2.1, for scripts/bench.sh: a bot that replies to every AT_MESSAGE_CREATE
(as botcluster's example bot does), pointed at an emulator that is already running. It prints "ready" once
READY and runs until it is terminated.

usage: botpy_bench.py --url http://127.0.0.1:PORT
"""

import argparse
import asyncio
import logging
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "interop"))
from botpy_probe import APP_ID, APP_SECRET, point_botpy_at  # noqa: E402

import botpy  # noqa: E402
from botpy.message import Message  # noqa: E402


class ReplyingBot(botpy.Client):
    async def on_ready(self):
        print("ready", flush=True)

    async def on_at_message_create(self, message: Message):
        await message.reply(content="pong" if message.content.endswith("ping") else "echo")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    args = parser.parse_args()
    logging.getLogger("botpy").setLevel(logging.ERROR)
    point_botpy_at(args.url)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    async def run():
        # botpy binds to the event loop that exists when the client is made: make it inside the running loop.
        bot = ReplyingBot(intents=botpy.Intents(public_guild_messages=True), timeout=30, ext_handlers=False)
        await bot.start(appid=APP_ID, secret=APP_SECRET)

    asyncio.run(run())


if __name__ == "__main__":
    main()
