"""psycopg 3 through the proxy: real work, every result checked.

Usage: python psycopg_client.py DSN

Exits non-zero (with a message naming the failed check) on any mismatch. Leaves these rows
behind for the Rust test to check on the database directly:
  py_items:  ids 1..3 (binary params), 10..109 (executemany), 200 (committed transaction),
             300..349 (COPY text), 400..409 (COPY binary), 500 (pipeline, before the error)
  py_notes:  ('prepared', 25) written by 25 executions of one prepared statement
"""

import datetime
import decimal
import sys

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from checks import FAILED, check, finish


def connect(dsn, **kw):
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10, **kw)


def setup(conn):
    conn.execute("DROP TABLE IF EXISTS py_items, py_notes")
    conn.execute(
        """CREATE TABLE py_items (
               id int PRIMARY KEY,
               name text,
               amount numeric(12, 3),
               ts timestamptz,
               doc jsonb,
               raw bytea,
               tags text[]
           )"""
    )
    conn.execute("CREATE TABLE py_notes (label text PRIMARY KEY, n int NOT NULL)")


def binary_params(conn):
    ts = datetime.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=datetime.timezone.utc)
    rows = [
        (1, "one", decimal.Decimal("1.500"), ts, Jsonb({"k": [1, 2, {"x": None}]}), b"\x00\x01\xff", ["a", "b"]),
        (2, "twö ünicode", decimal.Decimal("-0.001"), ts, Jsonb({}), b"", []),
        (3, None, None, None, None, None, None),
    ]
    with conn.cursor() as cur:
        for r in rows:
            # %b: parameters sent in binary format; binary=True: results in binary format.
            cur.execute(
                "INSERT INTO py_items VALUES (%b, %b, %b, %b, %b, %b, %b) RETURNING id, name",
                r,
                binary=True,
            )
            check(f"binary insert returning {r[0]}", cur.fetchone(), (r[0], r[1]))
        cur.execute(
            "SELECT id, name, amount, ts, doc, raw, tags FROM py_items WHERE id = ANY(%b) ORDER BY id",
            [[1, 2, 3]],
            binary=True,
        )
        got = cur.fetchall()
        check("binary select result format", cur.pgresult.fformat(0), 1)
    expected = [
        (1, "one", decimal.Decimal("1.500"), ts, {"k": [1, 2, {"x": None}]}, b"\x00\x01\xff", ["a", "b"]),
        (2, "twö ünicode", decimal.Decimal("-0.001"), ts, {}, b"", []),
        (3, None, None, None, None, None, None),
    ]
    got = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in got]
    check("binary select", got, expected)


def prepared(conn):
    conn.execute("INSERT INTO py_notes VALUES ('prepared', 0)")
    with conn.cursor() as cur:
        for i in range(25):
            cur.execute(
                "UPDATE py_notes SET n = n + %s WHERE label = %s RETURNING n",
                (1, "prepared"),
                prepare=True,
            )
            check(f"prepared update {i}", cur.fetchone(), (i + 1,))
        # The statement really is a named prepared statement on this session's server.
        cur.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'UPDATE py_notes SET n = n + $1%'"
        )
        check("named statement prepared on the server", cur.fetchone(), (1,))
        for i in range(10):
            cur.execute("SELECT %s::int * 2", (i,), prepare=True)
            check(f"prepared select {i}", cur.fetchone(), (i * 2,))


def executemany(conn):
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO py_items (id, name, amount) VALUES (%s, %s, %s)",
            [(i, f"many-{i}", decimal.Decimal(i) / 4) for i in range(10, 110)],
        )
        cur.execute("SELECT count(*), sum(amount) FROM py_items WHERE id BETWEEN 10 AND 109")
        check("executemany rows", cur.fetchone(), (100, decimal.Decimal("1487.500")))
        # executemany with returning: one result set per parameter set.
        cur.executemany("SELECT %s::int + 1", [(1,), (2,), (3,)], returning=True)
        results = []
        while True:
            results.append(cur.fetchone())
            if not cur.nextset():
                break
        check("executemany returning", results, [(2,), (3,), (4,)])


def transactions(conn):
    # Rolled back as a whole.
    with conn.transaction() as tx:
        conn.execute("INSERT INTO py_items (id, name) VALUES (199, 'rolled back')")
        raise psycopg.Rollback(tx)
    # Committed, with a rolled-back savepoint inside.
    with conn.transaction():
        conn.execute("INSERT INTO py_items (id, name) VALUES (200, 'committed')")
        with conn.transaction() as sp:
            conn.execute("INSERT INTO py_items (id, name) VALUES (201, 'savepoint rolled back')")
            raise psycopg.Rollback(sp)
    # An error inside a transaction rolls everything back and the connection goes on.
    try:
        with conn.transaction():
            conn.execute("INSERT INTO py_items (id, name) VALUES (202, 'before error')")
            conn.execute("INSERT INTO py_items (id, name) VALUES (1, 'duplicate key')")
        FAILED.append("duplicate key accepted")
    except psycopg.errors.UniqueViolation:
        pass
    check("status after failed transaction", conn.info.transaction_status, psycopg.pq.TransactionStatus.IDLE)
    rows = conn.execute("SELECT id FROM py_items WHERE id BETWEEN 199 AND 202 ORDER BY id").fetchall()
    check("transaction rows", rows, [(200,)])


def copy(conn):
    with conn.cursor() as cur:
        with cur.copy("COPY py_items (id, name, amount, tags) FROM STDIN") as cp:
            for i in range(300, 350):
                cp.write_row((i, f"copy\t{i}\n", decimal.Decimal(i), ["x", None, "z"]))
        check("copy text rowcount", cur.rowcount, 50)

        with cur.copy("COPY py_items (id, name, raw) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "text", "bytea"])
            for i in range(400, 410):
                cp.write_row((i, f"bin-{i}", bytes([i % 256, 0, 255])))

        # An error mid-stream: nothing of that COPY is kept and the session goes on.
        try:
            with cur.copy("COPY py_items (id, name) FROM STDIN") as cp:
                cp.write_row((600, "good"))
                cp.write(b"601\tbad\textra column\n")
                # Keep streaming well past the server's error (about 2 MB).
                for i in range(602, 100_000):
                    cp.write_row((i, "after the bad row"))
            FAILED.append("bad COPY row accepted")
        except psycopg.errors.BadCopyFileFormat:
            pass
        cur.execute("SELECT count(*) FROM py_items WHERE id >= 600")
        check("rows kept from the failed COPY", cur.fetchone(), (0,))

        # COPY TO, raw text.
        out = bytearray()
        with cur.copy("COPY (SELECT id, name, tags FROM py_items WHERE id IN (300, 301) ORDER BY id) TO STDOUT") as cp:
            for block in cp:
                out += block
        check(
            "copy to text",
            bytes(out),
            b"300\tcopy\\t300\\n\t{x,NULL,z}\n301\tcopy\\t301\\n\t{x,NULL,z}\n",
        )
        # COPY TO, binary, typed rows.
        with cur.copy("COPY (SELECT id, raw FROM py_items WHERE id BETWEEN 400 AND 402 ORDER BY id) TO STDOUT (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "bytea"])
            rows = [(r[0], bytes(r[1])) for r in cp.rows()]
        check("copy to binary", rows, [(400, b"\x90\x00\xff"), (401, b"\x91\x00\xff"), (402, b"\x92\x00\xff")])


def notifications(dsn, conn):
    listener = connect(dsn)
    try:
        listener.execute("LISTEN py_channel")
        notifier = conn
        sender_pid = notifier.execute("SELECT pg_backend_pid()").fetchone()[0]
        notifier.execute("NOTIFY py_channel, 'first'")
        notifier.execute("SELECT pg_notify('py_channel', 'sentinel')")
        got = []
        for n in listener.notifies(timeout=15):
            got.append((n.channel, n.payload, n.pid == sender_pid))
            if n.payload == "sentinel":
                break
        check(
            "notifications",
            got,
            [("py_channel", "first", True), ("py_channel", "sentinel", True)],
        )
        # Nothing else queued: a round trip on the listener brings no more.
        listener.execute("SELECT 1")
        extra = list(listener.notifies(timeout=0.2))
        check("extra notifications", [(n.channel, n.payload) for n in extra], [])
    finally:
        listener.close()


def pipeline(conn):
    try:
        with conn.pipeline() as p:
            conn.execute("INSERT INTO py_items (id, name) VALUES (500, 'pipeline synced')")
            p.sync()
            conn.execute("INSERT INTO py_items (id, name) VALUES (501, 'pipeline same batch as error')")
            conn.execute("SELECT 1 / 0")
            conn.execute("INSERT INTO py_items (id, name) VALUES (502, 'pipeline after error')")
        FAILED.append("division by zero in a pipeline did not fail")
    except psycopg.errors.DivisionByZero:
        pass
    rows = conn.execute("SELECT id FROM py_items WHERE id BETWEEN 500 AND 509 ORDER BY id").fetchall()
    check("pipeline rows", rows, [(500,)])
    # A pipeline that succeeds, with results read back in order.
    with conn.pipeline():
        curs = [conn.execute("SELECT %s::int * 10", (i,)) for i in range(20)]
    check("pipeline results", [c.fetchone()[0] for c in curs], [i * 10 for i in range(20)])


def main():
    dsn = sys.argv[1]
    with connect(dsn) as conn:
        setup(conn)
        binary_params(conn)
        prepared(conn)
        executemany(conn)
        transactions(conn)
        copy(conn)
        notifications(dsn, conn)
        pipeline(conn)
        check("final ping", conn.execute(sql.SQL("SELECT {}").format(sql.Literal("ok"))).fetchone(), ("ok",))
    finish("psycopg")


if __name__ == "__main__":
    main()
