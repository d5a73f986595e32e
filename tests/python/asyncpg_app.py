"""An asyncpg pool through the proxy: concurrent transactions on overlapping rows, COPY,
executemany, RETURNING.

Usage: python asyncpg_app.py URL

Expects the schema the Rust test creates (app_stacks.rs, ASYNCPG_SCHEMA): accounts with an
AFTER trigger writing balance_audit, transfers and events with ON DELETE CASCADE, readings
without a primary key. What it does:
  seed         executemany of the accounts, copy_records_to_table (binary COPY) into
               readings (duplicates included) and into events (uuid and timestamp defaults
               filled by the server), copy_to_table of CSV text
  transfers    WORKERS tasks on a pool of POOL connections, each running transactions that
               move money between accounts chosen from a few (so rows overlap): row locks
               in key order, UPDATE ... RETURNING, INSERT ... RETURNING; some at
               REPEATABLE READ without locks, retried on serialization failures; some
               rolled back on purpose, some failing on a CHECK and caught
  cleanup      fetch of DELETE ... RETURNING with a cascade, executemany of updates, a
               prepared statement run many times, a cursor read while its rows are
               updated in the same transaction, a multi-statement script
Checks that money is conserved and the counts add up. Exits non-zero on any unexpected
error; prints what it did.
"""

import asyncio
import datetime
import decimal
import json
import random
import sys

import asyncpg
from checks import Failed, check_or_fail as check

ACCOUNTS = 8
WORKERS = 12
POOL = 6
ROUNDS = 15
START = decimal.Decimal("1000.00")


class Tally:
    def __init__(self):
        self.committed = 0
        self.rolled_back = 0
        self.check_failures = 0
        self.serialization_retries = 0


async def init_connection(conn):
    # What applications usually do per pooled connection: a JSON codec (binary, as asyncpg's
    # documentation shows for jsonb, so binary COPY can use it too) and a name.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + json.dumps(v).encode(),
        decoder=lambda b: json.loads(b[1:].decode()),
        schema="pg_catalog",
        format="binary",
    )
    await conn.execute("SET application_name = 'asyncpg-app'")


async def seed(pool):
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, $3)",
            [(i, f"owner {i}", START) for i in range(1, ACCOUNTS + 1)],
        )
        t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
        readings = [(1 + i % 5, t0 + datetime.timedelta(minutes=i // 10), float(i % 7) / 3) for i in range(3000)]
        readings += readings[:50]  # exact duplicates: the table has no key
        res = await conn.copy_records_to_table("readings", records=readings, columns=["sensor", "at", "value"])
        check("copy readings", res, "COPY 3050")
        res = await conn.copy_records_to_table(
            "events",
            records=[(1 + i % ACCOUNTS, "seed", {"i": i}) for i in range(200)],
            columns=["account", "kind", "payload"],
        )
        check("copy events", res, "COPY 200")

        async def csv_source():
            for i in range(5):
                yield f"{9}\t2024-02-0{i + 1} 00:00:00+00\t{i}.5\n".encode()

        res = await conn.copy_to_table("readings", source=csv_source(), columns=["sensor", "at", "value"])
        check("copy text", res, "COPY 5")


async def transfer_locked(conn, worker, rng):
    a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
    amount = decimal.Decimal(rng.randint(1, 5000)) / 100
    async with conn.transaction():
        # Lock both rows in key order: concurrent transfers on the same accounts wait
        # instead of deadlocking.
        await conn.fetch("SELECT id FROM accounts WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE", [a, b])
        src = await conn.fetchrow(
            "UPDATE accounts SET balance = balance - $1, version = version + 1, updated_at = now() "
            "WHERE id = $2 RETURNING balance, version",
            amount,
            a,
        )
        await conn.execute("UPDATE accounts SET balance = balance + $1, version = version + 1 WHERE id = $2", amount, b)
        row = await conn.fetchrow(
            "INSERT INTO transfers (src, dst, amount, worker) VALUES ($1, $2, $3, $4) RETURNING id, at",
            a,
            b,
            amount,
            worker,
        )
        if row["id"] is None or src["version"] < 1:
            raise Failed("RETURNING gave no values")


async def transfer_repeatable_read(conn, worker, rng, tally):
    a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
    amount = decimal.Decimal(rng.randint(1, 500)) / 100
    for _attempt in range(50):
        try:
            async with conn.transaction(isolation="repeatable_read"):
                # Rows written in key order, as in every path here: the deadlocks left are
                # the database's to find, not the application's to cause.
                bal = await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", a)
                for acc, delta in sorted([(a, -amount), (b, amount)]):
                    if acc == a:
                        await conn.execute("UPDATE accounts SET balance = $1 WHERE id = $2", bal + delta, acc)
                    else:
                        await conn.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", delta, acc)
                await conn.execute(
                    "INSERT INTO transfers (src, dst, amount, worker) VALUES ($1, $2, $3, $4)", a, b, amount, worker
                )
            return
        except (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError):
            tally.serialization_retries += 1
    raise Failed("50 serialization failures in a row")


class Undo(Exception):
    pass


async def worker(pool, worker_id, tally):
    rng = random.Random(worker_id)
    for round_no in range(ROUNDS):
        async with pool.acquire() as conn:
            kind = (worker_id + round_no) % 6
            if kind in (0, 1, 2):
                await transfer_locked(conn, worker_id, rng)
                tally.committed += 1
            elif kind == 3:
                await transfer_repeatable_read(conn, worker_id, rng, tally)
                tally.committed += 1
            elif kind == 4:
                # The application changes its mind: everything of the transaction goes.
                try:
                    async with conn.transaction():
                        await transfer_locked_body(conn, worker_id, rng)
                        raise Undo()
                except Undo:
                    tally.rolled_back += 1
            else:
                # A CHECK violation inside a nested transaction (savepoint), caught; the
                # outer transaction commits what came before and after it.
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO events (account, kind, payload) VALUES ($1, 'attempt', $2)",
                        1 + worker_id % ACCOUNTS,
                        {"worker": worker_id},
                    )
                    try:
                        async with conn.transaction():
                            await conn.execute(
                                "UPDATE accounts SET balance = balance - 1000000 WHERE id = $1",
                                1 + round_no % ACCOUNTS,
                            )
                    except asyncpg.exceptions.CheckViolationError:
                        tally.check_failures += 1
                    await conn.execute(
                        "INSERT INTO events (account, kind, payload) VALUES ($1, 'after', $2)",
                        1 + worker_id % ACCOUNTS,
                        {"worker": worker_id},
                    )


async def transfer_locked_body(conn, worker_id, rng):
    a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
    for acc, delta in sorted([(a, -1), (b, 1)]):
        await conn.execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1", acc, delta)
    await conn.execute("INSERT INTO transfers (src, dst, amount, worker) VALUES ($1, $2, 1, $3)", a, b, worker_id)


async def main(url):
    pool = await asyncpg.create_pool(
        url, min_size=POOL, max_size=POOL, timeout=10, command_timeout=60, init=init_connection
    )
    try:
        print("== seed")
        await seed(pool)
        print(f"== transfers: {WORKERS} workers x {ROUNDS} rounds on {POOL} connections")
        tally = Tally()
        await asyncio.gather(*(worker(pool, w, tally) for w in range(WORKERS)))
        print(
            f"  committed {tally.committed}, rolled back {tally.rolled_back}, "
            f"check failures {tally.check_failures}, serialization retries {tally.serialization_retries}"
        )
        async with pool.acquire() as conn:
            check("money conserved", await conn.fetchval("SELECT sum(balance) FROM accounts"), START * ACCOUNTS)
            check("transfers", await conn.fetchval("SELECT count(*) FROM transfers"), tally.committed)
            check("check failures caught", tally.check_failures, await conn.fetchval(
                "SELECT count(*) FROM events WHERE kind = 'attempt'"))
            audit = await conn.fetchval("SELECT count(*) FROM balance_audit")
            print(f"  balance_audit rows: {audit}")
            check("audit rows", audit >= 2 * tally.committed, True)

            print("== cleanup")
            # DELETE ... RETURNING whose cascade removes the account's transfers and events.
            gone = await conn.fetch("DELETE FROM accounts WHERE id = $1 RETURNING id, balance", ACCOUNTS)
            check("delete returning", [r["id"] for r in gone], [ACCOUNTS])
            check(
                "cascade",
                await conn.fetchval(
                    "SELECT count(*) FROM transfers WHERE $1 IN (src, dst)", ACCOUNTS
                ),
                0,
            )
            await conn.executemany(
                "UPDATE events SET payload = payload || $2::jsonb WHERE account = $1 AND kind = 'seed'",
                [(i, {"archived": True}) for i in range(1, 4)],
            )
            rows = await conn.fetch(
                "UPDATE readings SET value = value * 2 WHERE sensor = $1 RETURNING sensor, value", 9
            )
            check("update returning", len(rows), 5)
            rows = await conn.fetch("DELETE FROM readings WHERE sensor = 5 AND value > 1 RETURNING *")
            print(f"  deleted {len(rows)} readings")
            # One prepared statement run many times (Bind/Execute only).
            stmt = await conn.prepare("UPDATE accounts SET version = version + 1 WHERE id = $1 RETURNING version")
            for i in range(1, ACCOUNTS):
                await stmt.fetchval(i)
            # A cursor (portal fetched a few rows at a time) read while its rows are written
            # in the same transaction.
            async with conn.transaction():
                async for r in conn.cursor("SELECT id, payload FROM events WHERE kind = 'after' ORDER BY id", prefetch=4):
                    await conn.execute(
                        "UPDATE events SET payload = $2::jsonb WHERE id = $1", r["id"], {"seen": True, "was": r["payload"]}
                    )
            # A script of several statements (no arguments: the simple protocol).
            await conn.execute(
                "UPDATE accounts SET owner = upper(owner) WHERE id = 1; "
                "INSERT INTO events (account, kind, payload) VALUES (1, 'script', '{}'); "
                "DELETE FROM readings WHERE sensor = 4 AND value = 0"
            )
    finally:
        await pool.close()
    print("asyncpg: all checks passed")


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1]))
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
