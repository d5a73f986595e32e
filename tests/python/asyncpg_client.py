"""asyncpg through the proxy: real work, every result checked.

Usage: python asyncpg_client.py DSN

Exits non-zero (with a message naming the failed check) on any mismatch. Leaves these rows
behind for the Rust test to check on the database directly:
  apg_items:  ids 1..3 (typed parameters), 1000..1999 (copy_records_to_table, binary COPY)
  apg_counter: one row (n = 40) from 40 executions of one prepared statement
"""

import asyncio
import datetime
import decimal
import json
import sys

import asyncpg
from asyncpg_session import asyncpg_session
from checks import FAILED, check, finish


async def setup(conn):
    await conn.execute("DROP TABLE IF EXISTS apg_items, apg_counter")
    await conn.execute(
        """CREATE TABLE apg_items (
               id int PRIMARY KEY,
               name text,
               amount numeric(14, 4),
               ts timestamptz,
               doc jsonb,
               raw bytea,
               ints int[],
               tags text[]
           )"""
    )
    await conn.execute("CREATE TABLE apg_counter (id int PRIMARY KEY, n int NOT NULL)")
    await conn.execute("INSERT INTO apg_counter VALUES (1, 0)")


async def prepared(conn):
    stmt = await conn.prepare("SELECT $1::int + $2::int AS sum, $3::text AS label")
    check("prepared parameter types", [t.name for t in stmt.get_parameters()], ["int4", "int4", "text"])
    check("prepared columns", [a.name for a in stmt.get_attributes()], ["sum", "label"])
    for i in range(20):
        row = await stmt.fetchrow(i, 1000, f"row {i}")
        check(f"prepared fetchrow {i}", (row["sum"], row["label"]), (i + 1000, f"row {i}"))
    upd = await conn.prepare("UPDATE apg_counter SET n = n + $1 WHERE id = 1 RETURNING n")
    for i in range(40):
        check(f"prepared update {i}", await upd.fetchval(1), i + 1)
    # Two statements prepared on the same session at once, used interleaved.
    a = await conn.prepare("SELECT $1::text || '-a'")
    b = await conn.prepare("SELECT $1::text || '-b'")
    for i in range(5):
        check(f"interleaved {i}", (await a.fetchval(str(i)), await b.fetchval(str(i))), (f"{i}-a", f"{i}-b"))


async def typed_params(conn):
    ts = datetime.datetime(2001, 9, 9, 1, 46, 40, 123456, tzinfo=datetime.timezone.utc)
    rows = [
        (1, "one", decimal.Decimal("12345.6789"), ts, json.dumps({"a": [1, 2], "b": None}), b"\x00\xfe\x01", [1, 2, 3], ["x", "y"]),
        (2, "ünïcødé", decimal.Decimal("-0.0001"), ts + datetime.timedelta(days=1), json.dumps([]), b"", [], []),
        (3, None, None, None, None, None, None, None),
    ]
    await conn.executemany("INSERT INTO apg_items VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows)
    got = await conn.fetch(
        "SELECT id, name, amount, ts, doc, raw, ints, tags FROM apg_items WHERE id = ANY($1::int[]) AND (ts IS NULL OR ts >= $2) ORDER BY id",
        [1, 2, 3],
        ts,
    )
    got = [tuple(r) for r in got]
    expected = [
        (r[0], r[1], r[2], r[3], r[4] and json.loads(r[4]), r[5], r[6], r[7])
        for r in rows
    ]
    got = [(g[0], g[1], g[2], g[3], g[4] and json.loads(g[4]), g[5], g[6], g[7]) for g in got]
    check("typed fetch", got, expected)
    # Parameters of each type compared on the server side.
    ok = await conn.fetchval(
        "SELECT amount = $1 AND ts = $2 AND doc = $3::jsonb AND raw = $4 AND ints = $5 AND tags = $6 FROM apg_items WHERE id = 1",
        rows[0][2], rows[0][3], rows[0][4], rows[0][5], rows[0][6], rows[0][7],
    )
    check("server-side comparison of typed parameters", ok, True)


async def copy(conn):
    records = [(i, f"copied {i}", decimal.Decimal(i) / 8, bytes([i % 256, (i * 7) % 256]), [i, -i]) for i in range(1000, 2000)]
    status = await conn.copy_records_to_table(
        "apg_items", records=records, columns=["id", "name", "amount", "raw", "ints"]
    )
    check("copy_records_to_table status", status, "COPY 1000")
    check(
        "rows after binary COPY",
        tuple(await conn.fetchrow("SELECT count(*), sum(amount) FROM apg_items WHERE id BETWEEN 1000 AND 1999")),
        (1000, decimal.Decimal("187437.5")),
    )

    out = bytearray()

    async def sink(chunk):
        out.extend(chunk)

    status = await conn.copy_from_query(
        "SELECT id, name, ints FROM apg_items WHERE id BETWEEN $1 AND $2 ORDER BY id", 1000, 1002, output=sink
    )
    check("copy_from_query status", status, "COPY 3")
    check(
        "copy_from_query data",
        bytes(out),
        b"1000\tcopied 1000\t{1000,-1000}\n1001\tcopied 1001\t{1001,-1001}\n1002\tcopied 1002\t{1002,-1002}\n",
    )
    # Binary COPY TO as well.
    out.clear()
    await conn.copy_from_query("SELECT 1::int", output=sink, format="binary")
    check("binary copy signature", bytes(out[:11]), b"PGCOPY\n\xff\r\n\x00")

    # A failing binary COPY (duplicate key) keeps nothing and the connection goes on.
    try:
        await conn.copy_records_to_table("apg_items", records=[(5000,), (5001,), (1000,)], columns=["id"])
        FAILED.append("duplicate key in COPY accepted")
    except asyncpg.UniqueViolationError:
        pass
    check("rows kept from the failed COPY", await conn.fetchval("SELECT count(*) FROM apg_items WHERE id >= 5000"), 0)


async def cursors(conn):
    async with conn.transaction():
        total = 0
        count = 0
        async for rec in conn.cursor("SELECT g FROM generate_series(1, $1::int) g", 1000, prefetch=37):
            total += rec["g"]
            count += 1
        check("cursor iteration", (count, total), (1000, 500500))

        cur = await conn.cursor("SELECT id FROM apg_items WHERE id >= $1 ORDER BY id", 1000)
        first = await cur.fetch(5)
        check("cursor fetch", [r["id"] for r in first], [1000, 1001, 1002, 1003, 1004])
        moved = await cur.forward(100)
        check("cursor forward", moved, 100)
        check("cursor fetchrow after forward", (await cur.fetchrow())["id"], 1105)

        # Two portals suspended at the same time.
        c1 = await conn.cursor("SELECT g FROM generate_series(1, 100) g")
        c2 = await conn.cursor("SELECT g * 2 FROM generate_series(1, 100) g")
        pairs = []
        for _ in range(3):
            pairs.append(((await c1.fetchrow())[0], (await c2.fetchrow())[0]))
        check("interleaved portals", pairs, [(1, 2), (2, 4), (3, 6)])


async def errors(conn):
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO apg_items (id, name) VALUES (7000, 'rolled back')")
            await conn.execute("UPDATE apg_counter SET n = n + 1000")
            await conn.fetchval("SELECT 1 / $1::int", 0)
        FAILED.append("division by zero accepted")
    except asyncpg.DivisionByZeroError:
        pass
    check("connection idle after failed transaction", conn.is_in_transaction(), False)
    check("insert rolled back", await conn.fetchval("SELECT count(*) FROM apg_items WHERE id = 7000"), 0)
    check("counter untouched", await conn.fetchval("SELECT n FROM apg_counter WHERE id = 1"), 40)

    # Savepoint inside a transaction: the inner error is rolled back, the outer commits.
    async with conn.transaction():
        await conn.execute("INSERT INTO apg_items (id, name) VALUES (7001, 'outer, later deleted')")
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO apg_items (id, name) VALUES (1, 'duplicate')")
        except asyncpg.UniqueViolationError:
            pass
        await conn.execute("DELETE FROM apg_items WHERE id = 7001")
    check("savepoint transaction", await conn.fetchval("SELECT count(*) FROM apg_items WHERE id >= 7000"), 0)

    # A server error outside any transaction.
    try:
        await conn.execute("SELECT * FROM no_such_table")
        FAILED.append("missing table accepted")
    except asyncpg.UndefinedTableError:
        pass
    check("after errors", await conn.fetchval("SELECT 42"), 42)


async def main():
    dsn = sys.argv[1]
    async with asyncpg_session(dsn, timeout=10, command_timeout=60) as conn:
        await setup(conn)
        await prepared(conn)
        await typed_params(conn)
        await copy(conn)
        await cursors(conn)
        await errors(conn)
    finish("asyncpg")


if __name__ == "__main__":
    asyncio.run(main())
