"""The backend process id a driver is told through the proxy is the server's own.

Usage: python backend_pid.py DSN

Checks, with psycopg 3 and asyncpg: the pid in BackendKeyData equals pg_backend_pid();
a session's own notifications carry that pid (listeners that skip their own messages rely
on it); pg_terminate_backend(that pid) ends that session and no other; a cancel through
the proxy still stops a running statement. Exits non-zero naming each failed check.
"""

import asyncio
import sys
import threading
import time

import psycopg
from psycopg import errors
from asyncpg_session import asyncpg_session
from checks import check, finish


def with_psycopg(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as other:
        told = conn.info.backend_pid
        check("psycopg: BackendKeyData pid is pg_backend_pid()",
              conn.execute("SELECT pg_backend_pid()").fetchone()[0], told)
        check("psycopg: two sessions, two pids", other.info.backend_pid != told, True)

        conn.execute("LISTEN own_channel")
        conn.execute("NOTIFY own_channel, 'mine'")
        other.execute("NOTIFY own_channel, 'theirs'")
        got = []
        for n in conn.notifies(timeout=10, stop_after=2):
            got.append((n.payload, n.pid == told))
        check("psycopg: own notification carries the session's pid",
              sorted(got), [("mine", True), ("theirs", False)])

        def cancel_soon():
            time.sleep(0.5)
            conn.cancel()

        t = threading.Thread(target=cancel_soon)
        t.start()
        try:
            conn.execute("SELECT pg_sleep(30)")
            check("psycopg: cancel stops the statement", "finished", "cancelled")
        except errors.QueryCanceled:
            pass
        t.join()
        check("psycopg: usable after the cancel", conn.execute("SELECT 1").fetchone()[0], 1)

        ended = other.execute("SELECT pg_terminate_backend(%s)", [told]).fetchone()[0]
        check("psycopg: pg_terminate_backend finds the session's backend", ended, True)
        try:
            conn.execute("SELECT 1")
            check("psycopg: the terminated session ends", "still running", "ended")
        except psycopg.OperationalError:
            pass
        check("psycopg: the other session lives on", other.execute("SELECT 2").fetchone()[0], 2)


async def with_asyncpg(dsn):
    async with asyncpg_session(dsn) as conn:
        check("asyncpg: get_server_pid() is pg_backend_pid()",
              await conn.fetchval("SELECT pg_backend_pid()"), conn.get_server_pid())
        got = asyncio.get_running_loop().create_future()
        await conn.add_listener("apg_channel", lambda _c, pid, _ch, payload: got.set_result((pid, payload)))
        await conn.execute("NOTIFY apg_channel, 'hello'")
        pid, payload = await asyncio.wait_for(got, 10)
        check("asyncpg: own notification carries the session's pid", (pid, payload),
              (conn.get_server_pid(), "hello"))


def main():
    dsn = sys.argv[1]
    with_psycopg(dsn)
    asyncio.run(with_asyncpg(dsn))
    finish("backend_pid")


if __name__ == "__main__":
    main()
