#!/usr/bin/env python3
"""The blog API's "list posts" request, the way the tutorial writes it first
(naive: one author lookup and one comments lookup per post -- an N+1 loop)
and the way it fixes it (eager: three statements in all).

Run it through pgsift and read the N+1 report pgsift produced:

    python examples/blog/blog.py --dsn postgresql://blog:blogpw@127.0.0.1:6432/blog \
        --driver psycopg2 --request naive --admin http://127.0.0.1:9930

--driver psycopg2 sends statements with literals inlined (what SQLAlchemy on
psycopg2 does); --driver asyncpg sends $n parameters with prepared statements.
--driver sqlalchemy is the blog as an ORM writes it: SQLAlchemy 2 models whose
relationships load lazily (naive) or with selectinload (eager), on psycopg2;
--driver sqlalchemy-psycopg runs the same on psycopg 3, which sends $n
parameters (and prepares statements it runs often).
"""
import argparse
import asyncio
import json
import time
import urllib.request

POSTS = "SELECT id, user_id, title, created_at FROM posts ORDER BY created_at DESC LIMIT 20"
AUTHOR = "SELECT id, name, email FROM users WHERE id = {}"
COMMENTS = "SELECT id, user_id, body FROM comments WHERE post_id = {} ORDER BY created_at"
AUTHORS_BATCH = "SELECT id, name, email FROM users WHERE id = ANY({})"
COMMENTS_BATCH = "SELECT id, post_id, user_id, body FROM comments WHERE post_id = ANY({}) ORDER BY post_id, created_at"
COUNT = "SELECT count(*) FROM posts"
UNRELATED = [
    "SELECT count(*) FROM users",
    "SELECT max(created_at) FROM posts",
    "SELECT count(*) FROM comments WHERE post_id < 10",
    "SELECT name FROM users ORDER BY id LIMIT 3",
    "SELECT 1",
]


def psycopg2_request(dsn, request, app):
    import psycopg2

    conn = psycopg2.connect(dsn, application_name=app)
    cur = conn.cursor()
    page = []
    if request == "naive":
        cur.execute(POSTS)
        for post_id, user_id, title, _ in cur.fetchall():
            cur.execute(AUTHOR.format("%s"), (user_id,))
            author = cur.fetchone()
            cur.execute(COMMENTS.format("%s"), (post_id,))
            page.append((title, author[1], len(cur.fetchall())))
    elif request == "eager":
        cur.execute(POSTS)
        posts = cur.fetchall()
        cur.execute(AUTHORS_BATCH.format("%s"), ([p[1] for p in posts],))
        authors = {r[0]: r[1] for r in cur.fetchall()}
        cur.execute(COMMENTS_BATCH.format("%s"), ([p[0] for p in posts],))
        counts = {}
        for r in cur.fetchall():
            counts[r[1]] = counts.get(r[1], 0) + 1
        page = [(p[2], authors[p[1]], counts.get(p[0], 0)) for p in posts]
    elif request == "duplicate":
        for _ in range(10):
            cur.execute(COUNT)
            page.append(cur.fetchone()[0])
    elif request == "unrelated":
        for sql in UNRELATED:
            cur.execute(sql)
            page.append(cur.fetchall())
    conn.commit()
    conn.close()
    return page


def sqlalchemy_request(dsn, request, app, dialect):
    from datetime import datetime

    from sqlalchemy import ForeignKey, create_engine, func, select, text
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload
    from sqlalchemy.pool import NullPool

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
        email: Mapped[str]

    class Comment(Base):
        __tablename__ = "comments"
        id: Mapped[int] = mapped_column(primary_key=True)
        post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"))
        user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
        body: Mapped[str]
        created_at: Mapped[datetime]

    class Post(Base):
        __tablename__ = "posts"
        id: Mapped[int] = mapped_column(primary_key=True)
        user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
        title: Mapped[str]
        created_at: Mapped[datetime]
        author: Mapped[User] = relationship()
        comments: Mapped[list[Comment]] = relationship(order_by=Comment.created_at)

    url = dsn.replace("postgresql://", f"postgresql+{dialect}://", 1)
    engine = create_engine(url, poolclass=NullPool, connect_args={"application_name": app})
    page = []
    with Session(engine) as session:
        latest = select(Post).order_by(Post.created_at.desc()).limit(20)
        if request == "naive":
            for post in session.scalars(latest):
                page.append((post.title, post.author.name, len(post.comments)))
        elif request == "eager":
            posts = session.scalars(latest.options(selectinload(Post.author), selectinload(Post.comments)))
            page = [(p.title, p.author.name, len(p.comments)) for p in posts]
        elif request == "duplicate":
            for _ in range(10):
                page.append(session.scalar(select(func.count()).select_from(Post)))
        elif request == "unrelated":
            for sql in UNRELATED:
                page.append(session.execute(text(sql)).all())
    engine.dispose()
    return page


async def asyncpg_request(dsn, request, app):
    import asyncpg

    conn = await asyncpg.connect(dsn, server_settings={"application_name": app})
    page = []
    if request == "naive":
        for post in await conn.fetch(POSTS):
            author = await conn.fetchrow(AUTHOR.format("$1"), post["user_id"])
            comments = await conn.fetch(COMMENTS.format("$1"), post["id"])
            page.append((post["title"], author["name"], len(comments)))
    elif request == "eager":
        posts = await conn.fetch(POSTS)
        authors = {r["id"]: r["name"] for r in await conn.fetch(AUTHORS_BATCH.format("$1::int[]"), [p["user_id"] for p in posts])}
        counts = {}
        for r in await conn.fetch(COMMENTS_BATCH.format("$1::int[]"), [p["id"] for p in posts]):
            counts[r["post_id"]] = counts.get(r["post_id"], 0) + 1
        page = [(p["title"], authors[p["user_id"]], counts.get(p["id"], 0)) for p in posts]
    elif request == "duplicate":
        for _ in range(10):
            page.append(await conn.fetchval(COUNT))
    elif request == "unrelated":
        for sql in UNRELATED:
            page.append(await conn.fetch(sql))
    await conn.close()
    return page


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--driver", choices=["psycopg2", "asyncpg", "sqlalchemy", "sqlalchemy-psycopg"], default="psycopg2")
    ap.add_argument("--request", choices=["naive", "eager", "duplicate", "unrelated"], default="naive")
    ap.add_argument("--app", help="application_name (default blog-<request>-<driver>)")
    ap.add_argument("--admin", help="pgsift admin URL: print the N+1 reports of this application afterwards")
    ap.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = ap.parse_args()
    app = args.app or f"blog-{args.request}-{args.driver}"
    started = time.perf_counter()
    if args.driver == "psycopg2":
        page = psycopg2_request(args.dsn, args.request, app)
    elif args.driver == "sqlalchemy":
        page = sqlalchemy_request(args.dsn, args.request, app, "psycopg2")
    elif args.driver == "sqlalchemy-psycopg":
        page = sqlalchemy_request(args.dsn, args.request, app, "psycopg")
    else:
        page = asyncio.run(asyncpg_request(args.dsn, args.request, app))
    elapsed = (time.perf_counter() - started) * 1000
    if not args.json:
        print(f"{args.request} request via {args.driver}: {len(page)} items in {elapsed:.1f} ms (application_name={app})")
    if args.admin:
        time.sleep(0.3)  # bursts end after n_plus_one.max_gap of quiet
        with urllib.request.urlopen(args.admin.rstrip("/") + "/api/n-plus-one") as r:
            reports = [x for x in json.load(r)["reports"] if x["application"] == app]
        if args.json:
            print(json.dumps(reports, indent=2))
            return
        if not reports:
            print("pgsift reported no N+1 bursts for this request.")
        for x in reports:
            print(f"\n[{x['kind']}] {x['query']}")
            print(f"  parent:   {x['parent_query']}")
            print(f"  example:  {x['example']}")
            print(f"  repeats:  {x['max_repeats']} in one burst, {x['total_repeats']} in {x['occurrences']} burst(s), {x['total_ms']:.2f} ms")
            print(f"  fix:      {x['suggestion']}")


if __name__ == "__main__":
    main()
