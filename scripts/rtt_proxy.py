#!/usr/bin/env python3
"""Counts the round trips between a host and its database.

usage: rtt_proxy.py LISTEN_PORT TARGET_PORT COUNT_FILE

Forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT and counts, over
all connections, every time the client sends after the server has answered
(or first): one round trip each, whatever the protocol (PostgreSQL,
MariaDB). On SIGUSR1 it writes the count so far to COUNT_FILE. Loopback
only; runs until killed.
"""
import asyncio, signal, sys

count = 0


async def pipe(reader, writer, on_data):
    try:
        while data := await reader.read(65536):
            on_data()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(client_r, client_w, target):
    server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
    state = {"answered": True}

    def from_client():
        global count
        if state["answered"]:
            count += 1
            state["answered"] = False

    def from_server():
        state["answered"] = True

    await asyncio.gather(pipe(client_r, server_w, from_client), pipe(server_r, client_w, from_server))


async def main():
    listen, target, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

    def dump():
        with open(out, "w") as f:
            f.write(str(count))

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    server = await asyncio.start_server(lambda r, w: handle(r, w, target), "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


asyncio.run(main())
