"""SQLAlchemy 2 on psycopg 3 through the proxy: schema from the models, ORM and Core writes.

Usage: python sqlalchemy_app.py URL        (postgres://user@host:port/db)

The URL is used as postgresql+psycopg://. What it does:
  create_all   tables (identity and serial keys, a composite key, an enum type, JSONB,
               ARRAY, server_default=func.now(), ondelete=CASCADE), and through DDL
               events an audit table with an AFTER trigger on "orders"
  ORM          relationships with cascade="all, delete-orphan" (orphans removed, parent
               deleted with its children), passive_deletes on a database cascade,
               session.merge of a detached and of a new object, begin_nested() savepoints
               (one rolled back, one released), bulk ORM update, yield_per streaming while
               writing, with_for_update(skip_locked=True)
  bulk load    COPY through the driver connection into a temp table, UPDATE ... FROM it,
               INSERT ... SELECT ... ON CONFLICT DO NOTHING
  Core         insert().returning(), executemany (insertmanyvalues and plain), an upsert
               with on_conflict_do_update that changes a value, on_conflict_do_nothing,
               update/delete with RETURNING
Exits non-zero on any unexpected error or a wrong result; prints what it did.
"""

import datetime
import decimal
import enum
import sys
from typing import List, Optional

from sqlalchemy import (
    DDL,
    BigInteger,
    Enum,
    ForeignKey,
    Identity,
    Integer,
    Numeric,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from checks import Failed, check_or_fail as check


class Base(DeclarativeBase):
    pass


class Status(enum.Enum):
    new = "new"
    paid = "paid"
    shipped = "shipped"


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime.datetime] = mapped_column(server_default=func.now())
    prefs: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    orders: Mapped[List["Order"]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", order_by="Order.id"
    )
    notes: Mapped[List["Note"]] = relationship(passive_deletes=True)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)  # serial
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[Status] = mapped_column(Enum(Status, name="order_status"), default=Status.new)
    total: Mapped[decimal.Decimal] = mapped_column(Numeric(12, 2), default=0)
    placed_at: Mapped[datetime.datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[Optional[datetime.datetime]] = mapped_column(onupdate=func.now())
    customer: Mapped[Customer] = relationship(back_populates="orders")
    lines: Mapped[List["OrderLine"]] = relationship(
        back_populates="order", cascade="all, delete-orphan", order_by="OrderLine.line_no"
    )


class OrderLine(Base):
    __tablename__ = "order_lines"
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(40))
    qty: Mapped[int]
    price: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
    order: Mapped[Order] = relationship(back_populates="lines")


class Note(Base):
    """Deleted by the database (ON DELETE CASCADE), not by the ORM (passive_deletes)."""

    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(Text)
    labels: Mapped[List[str]] = mapped_column(ARRAY(Text), server_default="{}")


class Stock(Base):
    __tablename__ = "stock"
    sku: Mapped[str] = mapped_column(String(40), primary_key=True)
    on_hand: Mapped[int]
    version: Mapped[int] = mapped_column(server_default=text("1"))
    touched_at: Mapped[datetime.datetime] = mapped_column(server_default=func.now())


# The audit table and its trigger, created with the tables through the proxy (DDL events).
AUDIT_DDL = [
    DDL(
        """CREATE TABLE order_audit (
               id bigserial PRIMARY KEY,
               order_id int NOT NULL,
               op text NOT NULL,
               old_status order_status,
               new_status order_status,
               old_total numeric(12, 2),
               new_total numeric(12, 2),
               at timestamptz NOT NULL DEFAULT clock_timestamp(),
               by_user text NOT NULL DEFAULT current_user
           )"""
    ),
    DDL(
        """CREATE FUNCTION order_audit() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO order_audit (order_id, op, old_status, new_status, old_total, new_total)
             VALUES (coalesce(NEW.id, OLD.id), TG_OP,
                     CASE WHEN TG_OP <> 'INSERT' THEN OLD.status END,
                     CASE WHEN TG_OP <> 'DELETE' THEN NEW.status END,
                     CASE WHEN TG_OP <> 'INSERT' THEN OLD.total END,
                     CASE WHEN TG_OP <> 'DELETE' THEN NEW.total END);
             RETURN NULL;
           END $$"""
    ),
    DDL(
        "CREATE TRIGGER order_audit AFTER INSERT OR UPDATE OR DELETE ON orders "
        "FOR EACH ROW EXECUTE FUNCTION order_audit()"
    ),
]
for ddl in AUDIT_DDL:
    event.listen(Order.__table__, "after_create", ddl)


def engine_for(url):
    if url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url[len("postgres://") :]
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=3, connect_args={"connect_timeout": 10})


def schema(engine):
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        names = conn.execute(
            text("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'")
        ).scalar()
    check("tables", names, "customers,notes,order_audit,order_lines,orders,stock")


def core_writes(engine):
    with engine.begin() as conn:
        # insert().returning() of server defaults and an identity.
        row = conn.execute(
            insert(Customer.__table__)
            .values(email="ada@example.com", name="Ada")
            .returning(Customer.__table__.c.id, Customer.__table__.c.created_at)
        ).one()
        check("returning id", row.id, 1)
        # executemany with RETURNING (SQLAlchemy's insertmanyvalues batches).
        ids = conn.execute(
            insert(Customer.__table__).returning(Customer.__table__.c.id, sort_by_parameter_order=True),
            [{"email": f"c{i}@example.com", "name": f"customer {i}"} for i in range(2, 12)],
        ).scalars().all()
        check("insertmanyvalues ids", ids, list(range(2, 12)))
        # executemany without RETURNING (the driver's executemany).
        conn.execute(
            insert(Stock.__table__),
            [{"sku": f"sku-{i}", "on_hand": i * 10} for i in range(1, 21)],
        )
        conn.execute(
            insert(Note.__table__),
            [{"customer_id": 1 + i % 4, "body": f"note {i}", "labels": ["x", str(i)]} for i in range(8)],
        )
    with engine.begin() as conn:
        # Upsert that changes a value of the existing row (and inserts the missing ones).
        stmt = pg_insert(Stock.__table__).values(
            [{"sku": "sku-1", "on_hand": 5}, {"sku": "sku-2", "on_hand": 7}, {"sku": "sku-99", "on_hand": 1}]
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[Stock.__table__.c.sku],
            set_={
                "on_hand": Stock.__table__.c.on_hand + stmt.excluded.on_hand,
                "version": Stock.__table__.c.version + 1,
                "touched_at": func.clock_timestamp(),
            },
        ).returning(Stock.__table__.c.sku, Stock.__table__.c.on_hand, Stock.__table__.c.version)
        got = sorted(tuple(r) for r in conn.execute(stmt))
        check("upsert", got, [("sku-1", 15, 2), ("sku-2", 27, 2), ("sku-99", 1, 1)])
        # (rowcount is not kept for statements without RETURNING in SQLAlchemy 2.1.)
        kept = conn.execute(
            pg_insert(Stock.__table__)
            .values(sku="sku-3", on_hand=0)
            .on_conflict_do_nothing()
            .returning(Stock.__table__.c.sku)
        ).all()
        check("on_conflict_do_nothing", kept, [])
        # The same upsert as executemany with bound parameters.
        stmt = pg_insert(Stock.__table__)
        stmt = stmt.on_conflict_do_update(
            index_elements=["sku"], set_={"on_hand": stmt.excluded.on_hand, "version": Stock.__table__.c.version + 10}
        )
        conn.execute(stmt, [{"sku": f"sku-{i}", "on_hand": -i} for i in range(15, 25)])
        # update/delete with RETURNING.
        upd = conn.execute(
            update(Stock.__table__)
            .where(Stock.__table__.c.on_hand < 0)
            .values(on_hand=0, touched_at=func.now())
            .returning(Stock.__table__.c.sku)
        ).scalars().all()
        check("update returning", len(upd), 10)
        gone = conn.execute(
            delete(Stock.__table__).where(Stock.__table__.c.sku.in_(["sku-23", "sku-24"])).returning(Stock.__table__.c.sku)
        ).scalars().all()
        check("delete returning", sorted(gone), ["sku-23", "sku-24"])


def orm_writes(engine):
    with Session(engine) as s, s.begin():
        ada = s.get(Customer, 1)
        for n in range(3):
            o = Order(customer=ada, total=decimal.Decimal("10.00") * (n + 1))
            o.lines = [OrderLine(line_no=k, sku=f"sku-{k}", qty=k, price=decimal.Decimal("2.50")) for k in range(1, 4)]
            s.add(o)
        bob = Customer(email="bob@example.com", name="Bob", prefs={"lang": "en", "tags": [1, 2]})
        bob.orders = [Order(total=decimal.Decimal("99.99"), lines=[OrderLine(line_no=1, sku="sku-5", qty=1, price=99.99)])]
        s.add(bob)
    with Session(engine) as s, s.begin():
        ada = s.scalars(select(Customer).where(Customer.email == "ada@example.com")).one()
        # delete-orphan: a line removed from its order, an order removed from its customer.
        first = ada.orders[0]
        first.lines.pop(1)
        first.status = Status.paid
        first.total = decimal.Decimal("12.34")
        check("the order to orphan has lines", len(ada.orders[2].lines), 3)
        ada.orders.pop(2)
        ada.prefs = {"lang": "fr"}
    with Session(engine) as s:
        # A savepoint rolled back: its order, its customer change and its upsert go away.
        with s.begin():
            cust = s.get(Customer, 2)
            cust.name = "customer two"
            sp = s.begin_nested()
            s.add(Order(customer=cust, total=decimal.Decimal("1.00")))
            cust.name = "not kept"
            s.flush()
            s.execute(update(Stock).where(Stock.sku == "sku-4").values(on_hand=Stock.on_hand - 100))
            sp.rollback()
            # A savepoint released.
            with s.begin_nested():
                s.add(Order(customer=cust, total=decimal.Decimal("2.00"), status=Status.shipped))
            # A savepoint rolled back by a failing flush.
            try:
                with s.begin_nested():
                    s.add(Customer(email="ada@example.com", name="duplicate"))
                    s.flush()
            except IntegrityError:
                print("  caught the expected IntegrityError in a savepoint")
            else:
                raise Failed("the duplicate email was accepted")
        check("savepoint rolled back", s.get(Customer, 2).name, "customer two")
        check("stock untouched", s.get(Stock, "sku-4").on_hand, 40)
    with Session(engine) as s, s.begin():
        # merge: a detached object with changes, and a new one.
        detached = Customer(id=3, email="c3@example.com", name="merged three", prefs={"merged": True})
        merged = s.merge(detached)
        check("merge loaded existing", merged.created_at is not None, True)
        s.merge(Stock(sku="sku-merge", on_hand=3))
        # ORM bulk update with a SQL expression, and ORM delete with the database's cascade.
        s.execute(update(Order).where(Order.status == Status.new).values(total=Order.total + 1))
    with Session(engine) as s, s.begin():
        # Streaming with yield_per (a server-side cursor in the transaction) while the rows
        # read are changed, and row locks that skip what another session holds.
        for cust in s.scalars(select(Customer).order_by(Customer.id).execution_options(yield_per=3)):
            cust.prefs = dict(cust.prefs or {}, seen=True)
            s.flush()
        locked = s.scalars(select(Stock).where(Stock.on_hand > 100).with_for_update(skip_locked=True)).all()
        for st in locked:
            st.on_hand -= 100
    bulk_load_through_temp_table(engine)
    with Session(engine) as s, s.begin():
        # Deleting a customer cascades (ORM) to its orders and their lines; its notes go by
        # the database's ON DELETE CASCADE (passive_deletes).
        victim = s.get(Customer, 1)
        s.delete(victim)
    with engine.connect() as conn:
        check("orders of the deleted customer", conn.execute(text("SELECT count(*) FROM orders WHERE customer_id = 1")).scalar(), 0)
        check("notes cascaded", conn.execute(text("SELECT count(*) FROM notes WHERE customer_id = 1")).scalar(), 0)
        audit = dict(conn.execute(text("SELECT op, count(*) FROM order_audit GROUP BY op")).all())
        print(f"  audit rows: {audit}")
        check("audit inserts", audit.get("INSERT"), 5)
        check("audit deletes", audit.get("DELETE"), 3)


def bulk_load_through_temp_table(engine):
    """The usual bulk-update recipe: COPY into a temp table through the driver, then one
    UPDATE ... FROM and one INSERT ... SELECT ... ON CONFLICT into the real table."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TEMP TABLE price_feed (sku text PRIMARY KEY, on_hand int) ON COMMIT DROP"))
        cur = conn.connection.driver_connection.cursor()
        with cur.copy("COPY price_feed (sku, on_hand) FROM STDIN") as copy:
            for i in range(5, 31):
                copy.write_row((f"sku-{i}", i * 7))
        updated = conn.execute(
            text("UPDATE stock s SET on_hand = f.on_hand, version = s.version + 1 FROM price_feed f WHERE f.sku = s.sku")
        ).rowcount
        check("updated from the temp table", updated, 18)
        conn.execute(
            text(
                "INSERT INTO stock (sku, on_hand) SELECT sku, on_hand FROM price_feed "
                "ON CONFLICT (sku) DO NOTHING"
            )
        )


def main():
    engine = engine_for(sys.argv[1])
    try:
        print("== create_all")
        schema(engine)
        print("== core")
        core_writes(engine)
        print("== orm")
        orm_writes(engine)
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        engine.dispose()
    print("sqlalchemy: all checks passed")


if __name__ == "__main__":
    main()
