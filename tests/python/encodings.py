"""Writes through the proxy in client encodings other than UTF8, with psycopg 3 (the
extended protocol, parameters encoded by the driver in the session's encoding).

Usage: python encodings.py DSN

For each encoding: rows inserted with parameters, in and out of a transaction, an update
of one of them, and a read back compared with what was sent. Exits non-zero naming each
failed check; the Rust test then compares old and new row by row.
"""

import sys

import psycopg
from checks import check, finish

CASES = [
    # (encoding, first id, texts)
    ("LATIN1", 100, ["café crème", "brûlée à la française", "ÀÉÎÕÜ ñ ß ÿ"]),
    ("WIN1252", 200, ["€uro “quoted” – dash", "œuvre Œ š Ž", "‰ † ‡ •"]),
    ("EUC_JP", 300, ["日本語のテキスト", "ｶﾀｶﾅ と ひらがな", "東京都 港区"]),
]


def main():
    dsn = sys.argv[1]
    for enc, first, texts in CASES:
        with psycopg.connect(dsn, client_encoding=enc, autocommit=True) as conn:
            check(f"{enc}: session encoding", conn.execute("SHOW client_encoding").fetchone()[0], enc)
            conn.execute("INSERT INTO enc (id, src, v) VALUES (%s, %s, %s)", [first, enc, texts[0]])
            with conn.transaction():
                for i, text in enumerate(texts[1:], start=1):
                    conn.execute("INSERT INTO enc (id, src, v) VALUES (%s, %s, %s)", [first + i, enc, text])
                conn.execute("UPDATE enc SET v = v || %s WHERE id = %s", [" " + texts[2], first])
            got = [r[0] for r in conn.execute("SELECT v FROM enc WHERE src = %s ORDER BY id", [enc])]
            check(f"{enc}: read back", got, [texts[0] + " " + texts[2], texts[1], texts[2]])
    finish("encodings")


if __name__ == "__main__":
    main()
