#!/usr/bin/env python3
"""A TCP forwarder whose link can be cut the way a network cuts it: on SIGUSR1 every byte in either direction is
dropped and nothing is closed (a half-open connection, as when a cable or a route goes), and new connections are
accepted but go nowhere; on SIGUSR2 the link is back (connections cut meanwhile stay dead, as TCP's would).

    python3 scripts/tcp_cut.py --to 127.0.0.1:5432      # prints "listening on PORT"

The multi-host tests put one in front of the database for each host, to cut one host off from the store while it
keeps its link to the platform.
"""
import argparse
import asyncio
import signal

parser = argparse.ArgumentParser()
parser.add_argument("--to", required=True)
parser.add_argument("--port", type=int, default=0)
args = parser.parse_args()
host, port = args.to.rsplit(":", 1)
state = {"cut": False, "epoch": 0}


async def pipe(reader, writer, epoch):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if state["cut"] or state["epoch"] != epoch:
                continue  # dropped on the floor: the peer waits for an answer that never comes
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if not state["cut"] and state["epoch"] == epoch:
            writer.close()


async def handle(client_reader, client_writer):
    epoch = state["epoch"]
    if state["cut"]:
        # Accepted, then silence: read and drop until the peer gives up (the reference keeps the socket open).
        try:
            while await client_reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        return
    try:
        server_reader, server_writer = await asyncio.open_connection(host, int(port))
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer, epoch), pipe(server_reader, client_writer, epoch))


def cut():
    state["cut"] = True
    state["epoch"] += 1
    print("cut", flush=True)


def heal():
    state["cut"] = False
    print("healed", flush=True)


async def main():
    # A parent may have blocked signals (a test runner's threads do), and the mask is inherited across exec: the
    # link must hear SIGUSR1, SIGUSR2 and SIGTERM.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    server = await asyncio.start_server(handle, "127.0.0.1", args.port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, cut)
    loop.add_signal_handler(signal.SIGUSR2, heal)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
