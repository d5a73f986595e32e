"""An asyncpg connection that closes itself: asyncpg's connections are not context
managers, and the driver scripts each want one closed however their checks end."""
import contextlib

import asyncpg


@contextlib.asynccontextmanager
async def asyncpg_session(dsn, **connect_args):
    """`async with asyncpg_session(dsn) as conn:` connects with `asyncpg.connect` and closes
    the connection when the block is left, by an exception too."""
    conn = await asyncpg.connect(dsn, **connect_args)
    try:
        yield conn
    finally:
        await conn.close()
