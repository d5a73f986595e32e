"""A small Django project through the proxy: its migrations (DDL) and ORM writes.

Usage: python django_app.py URL

Builds a throwaway project in a temporary directory (settings with
django.conf.settings.configure, one app "shop") and runs, each step in its own Python
process as `manage.py` would:

  makemigrations  0001_initial from the models (parent, child with a CASCADE foreign key,
                  many-to-many, UUID default, auto_now timestamps, JSONField)
  (hand-written)  0002: RunSQL, a raw join table without any primary key (ON DELETE CASCADE)
  migrate         contenttypes, auth and shop through the proxy
  phase1          bulk_create, save, update with F(), get_or_create, update_or_create,
                  many-to-many add/remove/set, bulk_update, raw cursor writes, JSON updates
  (hand-written)  0003: RunSQL, an audit table and an AFTER trigger on shop_book
  migrate
  makemigrations  0004 from changed models: a field with a default, an index, a new model
  migrate
  (hand-written)  0005: AddField, RunPython filling it with the ORM, AlterField NOT NULL
                  (DDL and rows in one migration transaction)
  migrate
  phase2          select_for_update in atomic with nested atomics (one fails and is caught),
                  a deferred foreign key failing at COMMIT, iterator() (server-side cursor)
                  with writes, bulk_create with update_conflicts / ignore_conflicts,
                  skip_locked, manual commit/rollback, delete with cascades (Django's and
                  the database's), more audited writes

Exits non-zero on any unexpected error or a wrong result; prints what it did.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
from urllib.parse import urlparse

from checks import Failed, check_or_fail as check

SHOP = "shop"

MODELS_V1 = '''
import uuid

from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100, unique=True)
    score = models.IntegerField(default=0)


class Tag(models.Model):
    label = models.CharField(max_length=50, unique=True)


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=200)
    copies = models.IntegerField(default=0)
    tags = models.ManyToManyField(Tag, related_name="books")
    # EXTRA_BOOK_FIELDS


class Event(models.Model):
    uid = models.UUIDField(default=uuid.uuid4, unique=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    payload = models.JSONField(default=dict)
    book = models.ForeignKey(Book, null=True, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20, default="note")

# EXTRA_MODELS
'''

# What 0004 adds: a column with a default on existing rows (Django adds it with a DEFAULT
# and drops the default in the same migration), an index, a model with a OneToOne.
EXTRA_BOOK_FIELDS = '''pages = models.IntegerField(default=100)
    isbn = models.CharField(max_length=20, null=True, db_index=True)'''
EXTRA_MODELS = '''
class Review(models.Model):
    book = models.OneToOneField(Book, on_delete=models.CASCADE, primary_key=True)
    stars = models.SmallIntegerField()
    body = models.TextField(blank=True)
    written = models.DateTimeField(auto_now_add=True)
'''

MIGRATION_0002 = '''
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]
    operations = [
        # A join table the way DBAs add them by hand: no primary key, duplicates allowed,
        # cascading delete done by the database itself.
        migrations.RunSQL(
            """CREATE TABLE shop_reader (
                   book_id bigint NOT NULL REFERENCES shop_book (id) ON DELETE CASCADE,
                   reader text NOT NULL,
                   at timestamptz NOT NULL DEFAULT now(),
                   note jsonb
               )""",
            reverse_sql="DROP TABLE shop_reader",
        ),
        migrations.RunSQL(
            "CREATE INDEX shop_reader_book ON shop_reader (book_id)",
            reverse_sql="DROP INDEX shop_reader_book",
        ),
    ]
'''

MIGRATION_0003 = '''
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_readers")]
    operations = [
        migrations.RunSQL(
            """
            CREATE TABLE shop_book_audit (
                id bigserial PRIMARY KEY,
                book_id bigint NOT NULL,
                op text NOT NULL,
                old_title text,
                new_title text,
                at timestamptz NOT NULL DEFAULT clock_timestamp()
            );
            CREATE FUNCTION shop_book_audit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF TG_OP = 'DELETE' THEN
                INSERT INTO shop_book_audit (book_id, op, old_title) VALUES (OLD.id, TG_OP, OLD.title);
              ELSIF TG_OP = 'UPDATE' THEN
                INSERT INTO shop_book_audit (book_id, op, old_title, new_title)
                VALUES (NEW.id, TG_OP, OLD.title, NEW.title);
              ELSE
                INSERT INTO shop_book_audit (book_id, op, new_title) VALUES (NEW.id, TG_OP, NEW.title);
              END IF;
              RETURN NULL;
            END $$;
            CREATE TRIGGER shop_book_audit AFTER INSERT OR UPDATE OR DELETE ON shop_book
                FOR EACH ROW EXECUTE FUNCTION shop_book_audit();
            """,
            reverse_sql="DROP TRIGGER shop_book_audit ON shop_book; DROP FUNCTION shop_book_audit(); "
            "DROP TABLE shop_book_audit",
        ),
    ]
'''


# A data migration the usual Django way: a column added nullable, filled by RunPython with
# the ORM (historical models), then made NOT NULL, all in the migration's one transaction.
MIGRATION_0005 = '''
from django.db import migrations, models


def fill_slugs(apps, schema_editor):
    Author = apps.get_model("shop", "Author")
    for a in Author.objects.order_by("pk"):
        a.slug = a.name.lower().replace(" ", "-").replace("!", "") + f"-{a.pk}"
        a.save(update_fields=["slug"])


class Migration(migrations.Migration):
    dependencies = [("shop", "0004_review_book_isbn_book_pages")]
    operations = [
        migrations.AddField("author", "slug", models.CharField(max_length=120, null=True)),
        migrations.RunPython(fill_slugs, migrations.RunPython.noop),
        migrations.AlterField("author", "slug", models.CharField(max_length=120)),
    ]
'''


def configure(url):
    """settings.configure for the project whose directory is on sys.path."""
    import django
    from django.conf import settings

    u = urlparse(url)
    db = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": u.path.lstrip("/"),
        "USER": u.username or "postgres",
        "PASSWORD": u.password or "",
        "HOST": u.hostname,
        "PORT": str(u.port or 5432),
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"connect_timeout": 10},
    }
    # The same database through psycopg's server-side binding (extended protocol with
    # parameters) next to the default client-side binding (simple protocol).
    bound = dict(db, OPTIONS={"connect_timeout": 10, "server_side_binding": True})
    settings.configure(
        DEBUG=False,
        SECRET_KEY="switchyard-test",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", SHOP],
        DATABASES={"default": db, "bound": bound},
        # Only "default" is migrated; "bound" is the same database.
        DATABASE_ROUTERS=[],
    )
    django.setup()


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text).lstrip())


def models_text(version):
    text = MODELS_V1
    if version >= 2:
        text = text.replace("# EXTRA_BOOK_FIELDS", EXTRA_BOOK_FIELDS)
        text = text.replace("# EXTRA_MODELS", EXTRA_MODELS)
    if version >= 3:
        text = text.replace(
            "    score = models.IntegerField(default=0)\n",
            "    score = models.IntegerField(default=0)\n    slug = models.CharField(max_length=120)\n",
            1,
        )
    return text


def make_project(root):
    write(os.path.join(root, SHOP, "__init__.py"), "")
    write(os.path.join(root, SHOP, "migrations", "__init__.py"), "")
    write(os.path.join(root, SHOP, "models.py"), models_text(1))


def run_step(url, root, step):
    """Runs this script again as a separate process for one step (fresh model registry)."""
    print(f"== {step}", flush=True)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), url, "--project", root, "--step", step],
        timeout=300,
    )
    if proc.returncode != 0:
        raise Failed(f"step {step} exited with {proc.returncode}")


# ---------------------------------------------------------------------------------------------
# Steps (run in the child process)
# ---------------------------------------------------------------------------------------------


def step_phase1():
    from django.db import connection, connections, transaction
    from django.db.models import F, Value
    from django.db.models.functions import Concat
    from shop.models import Author, Book, Event, Tag

    authors = Author.objects.bulk_create([Author(name=f"author {i}", score=i) for i in range(1, 7)])
    check("bulk_create returned ids", all(a.pk for a in authors), True)
    tags = Tag.objects.bulk_create([Tag(label=l) for l in ["sf", "poetry", "history", "crime"]])
    books = Book.objects.bulk_create(
        [Book(author=authors[i % 6], title=f"book {i}", copies=i) for i in range(1, 19)]
    )
    for b in books:
        b.tags.add(tags[b.copies % 4], tags[(b.copies + 1) % 4])
    books[0].tags.remove(tags[1])
    books[1].tags.set([tags[2]])
    check("m2m rows", Book.tags.through.objects.count(), 34)

    # save() on a fetched instance, and update() with F() expressions.
    b = Book.objects.get(title="book 3")
    b.title = "book 3 (2nd edition)"
    b.save()
    n = Book.objects.filter(copies__lt=5).update(copies=F("copies") * 10 + 1)
    check("update with F", n, 4)
    Author.objects.filter(score__gte=4).update(score=F("score") + 100, name=Concat(F("name"), Value("!")))

    # get_or_create: once created, once found; update_or_create: once updated, once created.
    _, created = Author.objects.get_or_create(name="author 1", defaults={"score": -1})
    check("get_or_create found", created, False)
    newcomer, created = Author.objects.get_or_create(name="newcomer", defaults={"score": 7})
    check("get_or_create created", created, True)
    _, created = Author.objects.update_or_create(name="newcomer", defaults={"score": 8})
    check("update_or_create updated", created, False)
    _, created = Tag.objects.update_or_create(label="drama", defaults={})
    check("update_or_create created", created, True)

    # bulk_update: one UPDATE with CASE per batch.
    for bk in books[:6]:
        bk.copies = bk.copies + 1000
    Book.objects.bulk_update(books[:6], ["copies"], batch_size=4)

    # JSONField, UUID default and auto_now timestamps; save() again moves `updated`.
    events = [Event.objects.create(book=books[i], payload={"seq": i, "tags": ["a", i]}) for i in range(5)]
    e = events[0]
    e.payload["seen"] = True
    e.kind = "seen"
    e.save()
    Event.objects.filter(pk=events[1].pk).update(payload={"replaced": [1, 2, {"deep": None}]})
    Event.objects.bulk_create([Event(payload={"bulk": i}, kind="bulk") for i in range(10)])

    # The same writes through server-side binding (extended protocol, parameters).
    bound = Author.objects.using("bound").create(name="bound author", score=3)
    Book.objects.using("bound").create(author=bound, title="bound book", copies=2)
    Author.objects.using("bound").filter(pk=bound.pk).update(score=F("score") * 3)
    with transaction.atomic(using="bound"):
        Event.objects.using("bound").create(payload={"bound": True}, kind="bound")
        Author.objects.using("bound").filter(name="newcomer").update(score=F("score") + 1)

    # Raw SQL into the join table without a key, duplicates included (executemany).
    with connection.cursor() as cur:
        cur.executemany(
            "INSERT INTO shop_reader (book_id, reader, note) VALUES (%s, %s, %s)",
            [(books[i % 5].pk, f"reader {i % 3}", '{"n": %d}' % (i % 2)) for i in range(12)],
        )
        cur.execute("UPDATE shop_reader SET note = '{\"n\": 9}' WHERE reader = %s", ["reader 2"])
        cur.execute("SELECT count(*) FROM shop_reader")
        check("raw join rows", cur.fetchone()[0], 12)
    with connections["bound"].cursor() as cur:
        cur.execute(
            "INSERT INTO shop_reader (book_id, reader) VALUES (%s, %s), (%s, %s)",
            [books[0].pk, "bound reader", books[0].pk, "bound reader"],
        )
    print("phase1 done")


def step_phase2():
    from django.db import IntegrityError, connection, transaction
    from django.db.models import F
    from shop.models import Author, Book, Event, Review, Tag

    # The column 0004 added got its default on existing rows; 0005 filled slugs.
    check("pages default", set(Book.objects.values_list("pages", flat=True)), {100})
    check("slugs filled", Author.objects.filter(slug__isnull=True).count(), 0)


    # A server-side cursor (iterator() uses a WITH HOLD cursor outside transactions) read
    # while the same rows are written through another cursor of the connection.
    for bk in Book.objects.order_by("pk").iterator(chunk_size=2):
        Book.objects.filter(pk=bk.pk).update(copies=F("copies") + 1)

    # Upserts: bulk_create with update_conflicts (ON CONFLICT DO UPDATE) and with
    # ignore_conflicts (ON CONFLICT DO NOTHING).
    Author.objects.bulk_create(
        [Author(name="author 3", score=333, slug="a3-upserted"), Author(name="upserted new", score=1, slug="upserted-new")],
        update_conflicts=True,
        unique_fields=["name"],
        update_fields=["score"],
    )
    check("upserted score", Author.objects.get(name="author 3").score, 333)
    Tag.objects.bulk_create([Tag(label="sf"), Tag(label="ignored new")], ignore_conflicts=True)
    # select_for_update(skip_locked=True) and a manual-autocommit block.
    with transaction.atomic():
        first = Author.objects.select_for_update(skip_locked=True).order_by("pk").first()
        Author.objects.filter(pk=first.pk).update(score=F("score") + 1000)
    connection.set_autocommit(False)
    try:
        Event.objects.create(kind="manual", payload={"autocommit": False})
        connection.commit()
        Event.objects.create(kind="manual", payload={"rolled": "back"})
        connection.rollback()
    finally:
        connection.set_autocommit(True)
    check("manual transaction", Event.objects.filter(kind="manual").count(), 1)
    # Row locks, nested atomic blocks (savepoints), one failing and caught inside.
    with transaction.atomic():
        author = Author.objects.select_for_update().get(name="author 2")
        locked = list(Book.objects.select_for_update().filter(author=author).order_by("id"))
        for bk in locked:
            bk.copies = F("copies") + 5
            bk.isbn = f"978-{bk.pk:06d}"
            bk.save(update_fields=["copies", "isbn"])
        with transaction.atomic():
            Review.objects.create(book=locked[0], stars=4, body="kept")
            try:
                with transaction.atomic():
                    Tag.objects.create(label="savepoint tag")
                    Author.objects.create(name="author 1")  # unique violation
            except IntegrityError:
                print("  caught the expected IntegrityError; its savepoint rolled back")
            else:
                raise Failed("the duplicate author was accepted")
            Review.objects.create(book=locked[1], stars=2, body="also kept")
        author.score = F("score") - 1
        author.save()
    check("savepoint undone", Tag.objects.filter(label="savepoint tag").exists(), False)
    check("reviews", Review.objects.count(), 2)

    # Errors that roll back a whole atomic block.
    try:
        with transaction.atomic():
            Book.objects.filter(author__name="author 3").update(title="never")
            raise RuntimeError("application error")
    except RuntimeError:
        pass
    check("rolled back", Book.objects.filter(title="never").exists(), False)

    # Audited writes (0003's trigger): insert, update, delete.
    b = Book.objects.create(author=Author.objects.get(name="newcomer"), title="audited", pages=321)
    b.title = "audited, renamed"
    b.save()
    Book.objects.filter(pk=b.pk).update(copies=F("copies") + 1)

    # Deletes: Django's cascade (books, their m2m rows, events, reviews) and the
    # database's (shop_reader rows, no key), also a queryset delete.
    deleted, per_model = Author.objects.get(name="author 1").delete()
    print(f"  deleted {deleted}: {per_model}")
    check("cascade reached books", per_model.get("shop.Book", 0) >= 3, True)
    Book.objects.filter(title__startswith="book 1").delete()
    Event.objects.filter(kind="bulk", payload__bulk__gte=5).delete()
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop_reader WHERE book_id NOT IN (SELECT id FROM shop_book)")
        check("database cascade emptied orphans", cur.fetchone()[0], 0)
        cur.execute("SELECT op, count(*) FROM shop_book_audit GROUP BY op ORDER BY op")
        audit = dict(cur.fetchall())
        print(f"  audit rows: {audit}")
        check("audit saw deletes", audit.get("DELETE", 0) >= 3, True)
    Event.objects.filter(book__isnull=True).update(updated=F("created"))

    # A foreign key Django makes DEFERRABLE INITIALLY DEFERRED fails at COMMIT: the whole
    # atomic block is rolled back on both sides, and the connection goes on (PostgreSQL
    # ends a transaction whose COMMIT failed).
    try:
        with transaction.atomic():
            Tag.objects.create(label="never committed")
            Book.objects.create(author_id=999999, title="orphan", pages=1)
    except IntegrityError:
        print("  caught the expected IntegrityError at COMMIT (deferred foreign key)")
    else:
        raise Failed("the book without an author was committed")
    check("deferred failure rolled back", Tag.objects.filter(label="never committed").exists(), False)
    Tag.objects.create(label="after the failed commit")
    print("phase2 done")


def step(url, root, name):
    sys.path.insert(0, root)
    configure(url)
    from django.core.management import call_command

    if name == "makemigrations":
        call_command("makemigrations", SHOP, verbosity=1)
    elif name == "migrate":
        call_command("migrate", verbosity=1, interactive=False)
        call_command("migrate", SHOP, "--check", verbosity=0)  # nothing left unapplied
    elif name == "phase1":
        step_phase1()
    elif name == "phase2":
        step_phase2()
    else:
        raise Failed(f"unknown step {name}")


def main():
    url = sys.argv[1]
    if "--step" in sys.argv:
        root = sys.argv[sys.argv.index("--project") + 1]
        try:
            step(url, root, sys.argv[sys.argv.index("--step") + 1])
        except Failed as e:
            print(f"FAILED: {e}", file=sys.stderr)
            sys.exit(1)
        return
    with tempfile.TemporaryDirectory(prefix="switchyard-django-") as root:
        make_project(root)
        run_step(url, root, "makemigrations")
        write(os.path.join(root, SHOP, "migrations", "0002_readers.py"), MIGRATION_0002)
        run_step(url, root, "migrate")
        run_step(url, root, "phase1")
        write(os.path.join(root, SHOP, "migrations", "0003_audit.py"), MIGRATION_0003)
        run_step(url, root, "migrate")
        write(os.path.join(root, SHOP, "models.py"), models_text(2))
        run_step(url, root, "makemigrations")
        run_step(url, root, "migrate")
        write(os.path.join(root, SHOP, "migrations", "0005_author_slug.py"), MIGRATION_0005)
        write(os.path.join(root, SHOP, "models.py"), models_text(3))
        run_step(url, root, "migrate")
        run_step(url, root, "phase2")
    print("django: all steps passed")


if __name__ == "__main__":
    main()
