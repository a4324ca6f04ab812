#!/usr/bin/env python3
"""A counting TCP proxy for the PostgreSQL wire protocol (sslmode=disable),
for measuring what a relay node asks of the database (PERFORMANCE.md,
"PostgreSQL: one round trip per search").

Counts, per connection and in total, the round trips (ReadyForQuery 'Z'
messages from the server: one per Sync or simple Query), CommandComplete
('C'), and from the client Parse ('P': statements prepared), Bind ('B'),
Execute ('E'), Sync ('S') and simple Query ('Q'); and the executions of each
statement by its SQL (the first 90 characters). Writes it all to OUT_FILE
every second and on SIGUSR1, and appends the totals to OUT_FILE.series.
Point the relay's --store at 127.0.0.1:LISTEN_PORT; stop it by its PID.

Usage: scripts/pg-count-proxy.py LISTEN_PORT UPSTREAM_PORT OUT_FILE
"""
import asyncio
import json
import signal
import socket
import sys
import time

listen_port, upstream_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
totals = {"connections": 0, "Z": 0, "P": 0, "B": 0, "E": 0, "Q": 0, "S": 0, "C": 0}
per = {}
names = {}
stmts = {}


def dump():
    with open(out, "w") as f:
        json.dump({"totals": totals, "per_connection": per, "statements": stmts}, f, indent=1)
    with open(out + ".series", "a") as f:
        f.write(json.dumps({"t": round(time.time(), 3), **totals}) + "\n")


async def pump(reader, writer, counting, startup, cid):
    buf = b""
    first = startup
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            buf += data
            while True:
                if first:
                    if len(buf) < 4:
                        break
                    n = int.from_bytes(buf[:4], "big")
                    if len(buf) < n:
                        break
                    buf = buf[n:]
                    first = False
                    continue
                if len(buf) < 5:
                    break
                n = int.from_bytes(buf[1:5], "big")
                if len(buf) < 1 + n:
                    break
                t = chr(buf[0])
                body = buf[5:1 + n]
                if t == "P":
                    name, _, rest = body.partition(b"\0")
                    sql, _, _ = rest.partition(b"\0")
                    names[(cid, name)] = " ".join(sql.decode(errors="replace").split())[:90]
                elif t == "B":
                    portal, _, rest = body.partition(b"\0")
                    name, _, _ = rest.partition(b"\0")
                    key = names.get((cid, name), "?" + name.decode(errors="replace"))
                    stmts[key] = stmts.get(key, 0) + 1
                elif t == "Q":
                    key = "Q:" + " ".join(body.decode(errors="replace").split())[:90]
                    stmts[key] = stmts.get(key, 0) + 1
                if t in counting:
                    totals[t] += 1
                    per[cid][t] = per[cid].get(t, 0) + 1
                buf = buf[1 + n:]
            await writer.drain()
    except Exception:
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_r, client_w):
    server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream_port)
    totals["connections"] += 1
    cid = str(totals["connections"])
    per[cid] = {}
    sock = client_w.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server_w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.gather(
        pump(client_r, server_w, {"P", "B", "E", "Q", "S"}, True, cid),
        pump(server_r, client_w, {"Z", "C"}, False, cid),
    )


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump)
    async def ticker():
        while True:
            await asyncio.sleep(1)
            dump()
    asyncio.create_task(ticker())
    async with server:
        await server.serve_forever()


asyncio.run(main())
