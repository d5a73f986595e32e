"""Reads through the proxy while the cutover sends them to new, as psycopg 3 and asyncpg
send them: psycopg's unnamed statements, then the named ones it prepares after a few
executions (prepare_threshold), a server-side parameter; asyncpg's cached named prepared
statements, fetchrow with parameters, a read inside a transaction.

Usage: python cutover_reads.py URL

Prints one line per read: "<client> <what> <port>" where port is the answering server's
(SHOW port), and the value read where there is one. Exits non-zero on any error.
"""

import asyncio
import sys

import psycopg
from asyncpg_session import asyncpg_session


def psycopg_reads(url):
    with psycopg.connect(url, autocommit=True, prepare_threshold=2) as conn:
        for i in range(6):
            port = conn.execute("SHOW port").fetchone()[0]
            print(f"psycopg show-{i} {port}")
        for i in range(6):
            row = conn.execute("SELECT v, current_setting('port') FROM t WHERE id = %s", (i,)).fetchone()
            print(f"psycopg param-{i} {row[1]} {row[0]}")
        with conn.transaction():
            port = conn.execute("SHOW port").fetchone()[0]
            print(f"psycopg in-transaction {port}")


async def asyncpg_reads(url):
    async with asyncpg_session(url) as conn:
        for i in range(6):
            port = await conn.fetchval("SHOW port")
            print(f"asyncpg show-{i} {port}")
        for i in range(6):
            row = await conn.fetchrow("SELECT v, current_setting('port') AS p FROM t WHERE id = $1", i)
            print(f"asyncpg param-{i} {row['p']} {row['v']}")
        async with conn.transaction():
            port = await conn.fetchval("SHOW port")
            print(f"asyncpg in-transaction {port}")


def main():
    url = sys.argv[1]
    psycopg_reads(url)
    asyncio.run(asyncpg_reads(url))


if __name__ == "__main__":
    main()
