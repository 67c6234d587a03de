"""Interop check: the official QQ bot SDK (qq-botpy 1.2.1), unchanged, against the botcluster emulator.

botpy hard-codes its https hosts, so the probe rewrites only where requests go (the token host and the OpenAPI
host, at the aiohttp layer) and lets botpy follow the websocket URL the emulator returns from /gateway/bot.
It starts the emulator, runs botpy with the 2 shards the emulator recommends, and checks: READY on both shards,
AT_MESSAGE_CREATE received on both, and every reply recorded by the emulator. Exit status 0 only if all hold.

botpy 1.2.1 identifies every shard at the same instant whatever max_concurrency says (ConnectionSession._runner
connects first and sleeps afterwards), and it never retries a shard closed with 4008 while another shard of its
start batch is still running. probe-cluster.json therefore turns the emulator's per-bucket identify window off
(identifyWindow "0s"); everything else is checked as the platform would.

usage: botpy_probe.py --botcluster PATH [--config PATH] [--timeout SECONDS]
"""

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import urllib.request

import aiohttp
import botpy
from botpy.message import Message

APP_ID = "102000001"
APP_SECRET = "emulator-development-secret"
WANTED_REPLIES = 20


def start_emulator(binary, config):
    proc = subprocess.Popen(
        [binary, "emulator", "--config", config, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in proc.stdout:
        if line.startswith("emulator listening on "):
            return proc, line.strip().rsplit(" ", 1)[1]
    raise SystemExit("probe: the emulator exited before listening (status %s)" % proc.wait())


def point_botpy_at(base_url):
    """Rewrites botpy's hard-coded hosts to the emulator; nothing else of botpy changes."""
    original = aiohttp.ClientSession._request
    hosts = ("https://bots.qq.com", "https://api.sgroup.qq.com", "https://sandbox.api.sgroup.qq.com")

    async def rewritten(self, method, url, *args, **kwargs):
        text = str(url)
        for host in hosts:
            if text.startswith(host):
                text = base_url + text[len(host):]
                kwargs.pop("ssl", None)
        return await original(self, method, text, *args, **kwargs)

    aiohttp.ClientSession._request = rewritten


def stats(base_url):
    with urllib.request.urlopen(base_url + "/emulator/stats", timeout=5) as response:
        return json.load(response)


class ProbeBot(botpy.Client):
    def __init__(self, shards, **kwargs):
        super().__init__(**kwargs)
        self.shards = shards
        self.readies = 0
        self.replied = 0
        self.shards_seen = set()
        self.done = asyncio.Event()

    async def on_ready(self):
        self.readies += 1

    async def on_at_message_create(self, message: Message):
        self.shards_seen.add((int(message.guild_id) >> 22) % self.shards)
        await message.reply(content="pong" if message.content.endswith("ping") else "echo")
        self.replied += 1
        if self.readies >= self.shards and self.replied >= WANTED_REPLIES and len(self.shards_seen) == self.shards:
            self.done.set()


async def probe(base_url, timeout):
    with urllib.request.urlopen(urllib.request.Request(
        base_url + "/app/getAppAccessToken", method="POST",
        data=json.dumps({"appId": APP_ID, "clientSecret": APP_SECRET}).encode(),
        headers={"Content-Type": "application/json"},
    )) as response:
        token = json.load(response)["access_token"]
    with urllib.request.urlopen(urllib.request.Request(
        base_url + "/gateway/bot", headers={"Authorization": "QQBot " + token},
    )) as response:
        shards = json.load(response)["shards"]

    point_botpy_at(base_url)
    bot = ProbeBot(shards, intents=botpy.Intents(public_guild_messages=True), timeout=10, ext_handlers=False)
    runner = asyncio.ensure_future(bot.start(appid=APP_ID, secret=APP_SECRET))
    try:
        await asyncio.wait_for(bot.done.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        runner.cancel()
        try:
            await runner
        except BaseException:
            pass
        await bot.http.close()
    # Let the last replies land before reading the counters.
    await asyncio.sleep(0.5)
    return shards, {"readies": bot.readies, "replied": bot.replied, "shards_seen": set(bot.shards_seen)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--botcluster", required=True)
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "probe-cluster.json"))
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    logging.getLogger("botpy").setLevel(logging.WARNING)

    proc, base_url = start_emulator(args.botcluster, args.config)
    try:
        shards, seen = asyncio.run(probe(base_url, args.timeout))
        counts = stats(base_url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    failures = []
    if shards != 2:
        failures.append("the emulator recommended %d shards, the probe config asks for 2" % shards)
    if seen["readies"] < shards or counts["identifies"] < shards:
        failures.append("READY on %d of %d shards (emulator counted %d identifies)" % (seen["readies"], shards, counts["identifies"]))
    if len(seen["shards_seen"]) < shards:
        failures.append("AT_MESSAGE_CREATE seen on shards %s of %d" % (sorted(seen["shards_seen"]), shards))
    if seen["replied"] < WANTED_REPLIES or counts["messagesReplied"] < seen["replied"]:
        failures.append("botpy replied %d times, the emulator recorded %d replied messages" % (seen["replied"], counts["messagesReplied"]))
    if counts["identifyViolations"] or counts["protocolErrors"] or counts["messagesRepliedMoreThanOnce"]:
        failures.append("emulator counted violations %d, protocol errors %d, double replies %d" % (
            counts["identifyViolations"], counts["protocolErrors"], counts["messagesRepliedMoreThanOnce"]))
    summary = "botpy %s: %d shards ready, %d replies sent, %d recorded, %d identifies, %d violations" % (
        botpy.__version__ if hasattr(botpy, "__version__") else "1.2.1", seen["readies"], seen["replied"],
        counts["messagesReplied"], counts["identifies"], counts["identifyViolations"])
    print(summary)
    for failure in failures:
        print("FAIL: " + failure)
    sys.stdout.flush()
    # botpy's BotHttp.__del__ needs a running event loop that no longer exists: skip the interpreter's
    # finalizers rather than print its traceback.
    os._exit(1 if failures else 0)


if __name__ == "__main__":
    main()
