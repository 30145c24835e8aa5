"""Real Python drivers through pgsift in transaction pooling mode.

Run by tests/python_transaction_mode.rs, which starts PostgreSQL and a
transaction-mode pgsift with pool_size 4 and sets:

  PGSIFT_TX_URL  libpq URL through the proxy   (user blog, database app)
  DIRECT_URL     libpq URL straight to Postgres (user blog, database app)

Many more clients than servers share the pool, so every client keeps moving
between server connections: named prepared statements must be re-prepared
on whichever server a client lands on, Close must not break anyone, and each
client's session settings must follow it. Every result is checked; every
error fails the test, with the first few failures named in the message.

tests/python_drivers.rs runs pytest on the whole tests/python directory
against a session-mode proxy without PGSIFT_TX_URL; this module skips itself
there.
"""

import asyncio
import gc
import os
import random
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

if not os.environ.get("PGSIFT_TX_URL"):
    pytest.skip(
        "PGSIFT_TX_URL is not set; run through `cargo test --test python_transaction_mode`",
        allow_module_level=True,
    )

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
import psycopg.errors  # noqa: E402
import psycopg2  # noqa: E402

CONNECT_TIMEOUT = 10
COMMAND_TIMEOUT = 30
WORKERS = 20
LOOKUP_ROWS = 100


@pytest.fixture(scope="module")
def tx_url():
    return os.environ["PGSIFT_TX_URL"]


@pytest.fixture(scope="module")
def direct_url():
    value = os.environ.get("DIRECT_URL")
    if not value:
        raise RuntimeError("DIRECT_URL is not set; run through `cargo test --test python_transaction_mode`")
    return value


@pytest.fixture(scope="module", autouse=True)
def schema(direct_url):
    """The lookup table of the statement mix and the two per-client schemas."""
    with psycopg.connect(direct_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        conn.execute("DROP TABLE IF EXISTS tx_lookup")
        conn.execute("DROP SCHEMA IF EXISTS tx_a CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS tx_b CASCADE")
        conn.execute("CREATE TABLE tx_lookup (k int4 PRIMARY KEY, name text NOT NULL)")
        conn.execute(
            "INSERT INTO tx_lookup SELECT k, 'name-' || k FROM generate_series(1, %s) AS k",
            (LOOKUP_ROWS,),
        )
        for s in ("a", "b"):
            conn.execute(f"CREATE SCHEMA tx_{s}")
            conn.execute(f"CREATE TABLE tx_{s}.t (v text)")
            conn.execute(f"INSERT INTO tx_{s}.t VALUES ('{s}')")
    yield
    with psycopg.connect(direct_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        conn.execute("DROP TABLE IF EXISTS tx_lookup")
        conn.execute("DROP SCHEMA IF EXISTS tx_a CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS tx_b CASCADE")


# ------------------------------------------------------ the statement mix


def _word(rng):
    alphabet = string.ascii_letters + string.digits + " '"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _int(rng):
    # crosses the int2 / int4 boundary, so psycopg 3 sends different
    # parameter types for the same query text
    return rng.choice([rng.randint(0, 100), rng.randint(0, 100_000)])


def _csv(rng):
    n = rng.randint(1, 20)
    return n, ",".join(str(rng.randint(0, 9)) for _ in range(n))


# (SQL with {0}, {1}, … for the parameters, argument maker, expected row)
MIX = [
    ("SELECT {0}::int4 + {1}::int4", lambda r: (_int(r), _int(r)), lambda a, b: (a + b,)),
    ("SELECT {0}::text || '-' || {1}::text", lambda r: (_word(r), _word(r)), lambda a, b: (f"{a}-{b}",)),
    ("SELECT count(*) FROM generate_series(1, {0}::int4)", lambda r: (r.randint(0, 300),), lambda n: (n,)),
    ("SELECT name FROM tx_lookup WHERE k = {0}::int4", lambda r: (r.randint(1, LOOKUP_ROWS),), lambda k: (f"name-{k}",)),
    (
        "SELECT {0}::int8 * {1}::int8",
        lambda r: (r.randint(0, 3_000_000_000), r.randint(0, 1000)),
        lambda a, b: (a * b,),
    ),
    ("SELECT upper({0}::text), length({0}::text)", lambda r: (_word(r),), lambda s: (s.upper(), len(s))),
    ("SELECT mod({0}::int4, 7), {0}::int4 / 7", lambda r: (_int(r),), lambda n: (n % 7, n // 7)),
    (
        "SELECT array_length(string_to_array({1}::text, ','), 1), {0}::int4",
        lambda r: _csv(r),
        lambda n, s: (n, n),
    ),
    (
        "SELECT sum(k) FROM tx_lookup WHERE k <= {0}::int4",
        lambda r: (r.randint(1, LOOKUP_ROWS),),
        lambda n: (n * (n + 1) // 2,),
    ),
    (
        "SELECT {0}::int4 > {1}::int4, coalesce(NULL::text, {2}::text)",
        lambda r: (_int(r), _int(r), _word(r)),
        lambda a, b, s: (a > b, s),
    ),
]


def _max_param(sql):
    n = 0
    while "{%d}" % n in sql:
        n += 1
    return n


def asyncpg_sql(sql):
    return sql.format(*[f"${i + 1}" for i in range(_max_param(sql))])


def psycopg_sql(sql):
    return sql.format(*[f"%(p{i})s" for i in range(_max_param(sql))])


def psycopg_args(args):
    return {f"p{i}": v for i, v in enumerate(args)}


MIX_ASYNCPG = [(asyncpg_sql(s), make, expect, s) for s, make, expect in MIX]
MIX_PSYCOPG = [(psycopg_sql(s), make, expect, s) for s, make, expect in MIX]


class Failures:
    """Thread-safe record of what went wrong, reported all at once."""

    def __init__(self):
        self.items = []
        self.lock = threading.Lock()

    def add(self, text):
        with self.lock:
            self.items.append(text)

    def check(self, what):
        assert not self.items, f"{what}: {len(self.items)} failure(s), first ones:\n  " + "\n  ".join(self.items[:10])


def _check_row(failures, who, i, sql, args, got, want):
    if got != want:
        failures.add(f"{who} query {i}: {sql!r} {args!r} returned {got!r}, expected {want!r}")


# -------------------------------------------------------------- fillers


class Fillers:
    """Busy connections that keep the pool's servers occupied in short
    transactions with settings of their own, so the clients under test keep
    landing on different servers that other clients dirtied."""

    def __init__(self, url, n, failures):
        self.url = url
        self.n = n
        self.failures = failures
        self.stop = threading.Event()
        self.threads = []
        self.rounds = 0

    def _run(self, idx):
        try:
            with psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                options="-c TimeZone=UTC -c DateStyle=German -c extra_float_digits=2",
                application_name=f"filler{idx}",
            ) as conn:
                conn.execute("SET search_path TO public")
                want = ("UTC", "German, DMY", "public", f"filler{idx}")
                while not self.stop.is_set():
                    with conn.transaction():
                        row = conn.execute(
                            "SELECT current_setting('TimeZone'), current_setting('DateStyle'),"
                            " current_setting('search_path'), current_setting('application_name'),"
                            " pg_sleep(0.002)"
                        ).fetchone()
                    if row[:4] != want:
                        self.failures.add(f"filler {idx} saw settings {row[:4]!r}, expected {want!r}")
                    self.rounds += 1
        except Exception as e:  # reported through self.failures and checked by the test
            self.failures.add(f"filler {idx}: {type(e).__name__}: {e}")

    def __enter__(self):
        for i in range(self.n):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        if exc_type is None:
            self.failures.check("filler connections")


# ----------------------------------------------------- 1. asyncpg cache


async def _asyncpg_worker(url, w, queries, failures, **connect_kwargs):
    rng = random.Random(1000 + w)
    done = 0
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT, **connect_kwargs)
    try:
        i = 0
        while i < queries:
            in_tx = i % 50 == 49
            tx = conn.transaction() if in_tx else None
            if tx is not None:
                await tx.start()
            for _ in range(min(3 if in_tx else 1, queries - i)):
                sql, make, expect, _ = MIX_ASYNCPG[rng.randrange(len(MIX_ASYNCPG))]
                args = make(rng)
                try:
                    row = await conn.fetchrow(sql, *args)
                except Exception as e:
                    failures.add(f"asyncpg worker {w} query {i}: {sql!r} {args!r}: {type(e).__name__}: {e}")
                    return done
                _check_row(failures, f"asyncpg worker {w}", i, sql, args, tuple(row), expect(*args))
                i += 1
                done += 1
            if tx is not None:
                await tx.commit()
    finally:
        await conn.close()
    return done


def _run_asyncpg_workers(url, workers, queries, **connect_kwargs):
    failures = Failures()

    async def go():
        return await asyncio.gather(
            *[_asyncpg_worker(url, w, queries, failures, **connect_kwargs) for w in range(workers)]
        )

    done = asyncio.run(go())
    failures.check("asyncpg workers")
    assert sum(done) == workers * queries, done


def test_asyncpg_with_its_default_statement_cache_gets_correct_results_from_20_connections_on_4_servers(tx_url):
    _run_asyncpg_workers(tx_url, WORKERS, 500)


def test_asyncpg_with_a_tiny_statement_cache_closes_and_reprepares_statements_without_errors(tx_url):
    # three cached statements for ten query texts: asyncpg keeps evicting and
    # Closing statements and preparing the same texts under new names
    _run_asyncpg_workers(tx_url, 10, 300, statement_cache_size=3)


# ------------------------------------------- 2. psycopg 3, always prepared


def _psycopg3_worker(url, w, queries, failures, binary, prepare_threshold=0, prepared_max=None):
    rng = random.Random(2000 + w)
    done = 0
    with psycopg.connect(
        url, autocommit=True, prepare_threshold=prepare_threshold, connect_timeout=CONNECT_TIMEOUT
    ) as conn:
        if prepared_max is not None:
            conn.prepared_max = prepared_max
        cur = conn.cursor(binary=binary)
        i = 0
        while i < queries:
            in_tx = i % 50 == 49
            tx = conn.transaction() if in_tx else None
            if tx is not None:
                tx.__enter__()
            for _ in range(min(3 if in_tx else 1, queries - i)):
                sql, make, expect, _ = MIX_PSYCOPG[rng.randrange(len(MIX_PSYCOPG))]
                args = make(rng)
                try:
                    cur.execute(sql, psycopg_args(args))
                    row = cur.fetchone()
                except Exception as e:
                    failures.add(f"psycopg3 worker {w} query {i}: {sql!r} {args!r}: {type(e).__name__}: {e}")
                    if tx is not None:
                        tx.__exit__(type(e), e, e.__traceback__)
                    return done
                _check_row(failures, f"psycopg3 worker {w}", i, sql, args, row, expect(*args))
                i += 1
                done += 1
            if tx is not None:
                tx.__exit__(None, None, None)
    return done


def _run_threads(fn, workers, *args, **kwargs):
    failures = Failures()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, *args[:1], w, *args[1:], failures, **kwargs) for w in range(workers)]
        done = [f.result() for f in futures]
    return failures, done


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg3_preparing_every_statement_gets_correct_results_from_20_threads_on_4_servers(tx_url, binary):
    failures, done = _run_threads(_psycopg3_worker, WORKERS, tx_url, 500, binary=binary)
    failures.check("psycopg 3 workers")
    assert sum(done) == WORKERS * 500, done


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg3_never_preparing_sends_unnamed_statements_and_gets_correct_results_from_20_threads(tx_url, binary):
    # prepare_threshold=None: every query is an unnamed Parse/Bind/Execute/Sync
    failures, done = _run_threads(_psycopg3_worker, WORKERS, tx_url, 500, binary=binary, prepare_threshold=None)
    failures.check("psycopg 3 workers, unnamed statements")
    assert sum(done) == WORKERS * 500, done


# --------------------------------------------- 3. psycopg2, inline literals


def _psycopg2_worker(url, w, queries, failures):
    rng = random.Random(3000 + w)
    done = 0
    conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for i in range(queries):
                sql, make, expect, _ = MIX_PSYCOPG[rng.randrange(len(MIX_PSYCOPG))]
                args = make(rng)
                try:
                    cur.execute(sql, psycopg_args(args))
                    row = cur.fetchone()
                except Exception as e:
                    failures.add(f"psycopg2 worker {w} query {i}: {sql!r} {args!r}: {type(e).__name__}: {e}")
                    return done
                _check_row(failures, f"psycopg2 worker {w}", i, sql, args, row, expect(*args))
                done += 1
    finally:
        conn.close()
    return done


def test_psycopg2_with_inlined_literals_gets_correct_results_from_20_threads_on_4_servers(tx_url):
    failures, done = _run_threads(_psycopg2_worker, WORKERS, tx_url, 200)
    failures.check("psycopg2 workers")
    assert sum(done) == WORKERS * 200, done


# ------------------------------------------------- 4. settings isolation

SETTINGS_QUERY = (
    "SELECT current_setting('TimeZone'), (SELECT v FROM t), current_setting('DateStyle'),"
    " current_setting('application_name'), current_setting('extra_float_digits'),"
    " '2024-01-01 12:00:00+00'::timestamptz::text, (1 / 3::float8)::text"
)
PID_QUERY = SETTINGS_QUERY + ", pg_backend_pid()"

CLIENT_A = dict(
    options="-c TimeZone=America/New_York",
    application_name="tx_client_a",
    sets=["SET search_path TO tx_a, public", "SET DateStyle TO 'SQL, DMY'"],
)
CLIENT_B = dict(
    options="-c TimeZone=Asia/Tokyo -c extra_float_digits=0",
    application_name=None,
    sets=["SET search_path TO tx_b, public", "SET application_name TO 'tx_client_b'"],
)


def _settings_conn(url, client, **kwargs):
    extra = {"application_name": client["application_name"]} if client["application_name"] else {}
    conn = psycopg.connect(
        url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, options=client["options"], **extra, **kwargs
    )
    for s in client["sets"]:
        conn.execute(s)
    return conn


def _expected_settings(direct_url, client):
    with _settings_conn(direct_url, client) as conn:
        return conn.execute(SETTINGS_QUERY).fetchone()


def _settings_client(url, who, client, want, rounds, failures, pids):
    with _settings_conn(url, client) as conn:
        for i in range(rounds):
            try:
                if i % 3 == 0:
                    rows = [conn.execute(PID_QUERY).fetchone()]
                elif i % 3 == 1:
                    conn.execute("BEGIN")
                    rows = [conn.execute(PID_QUERY).fetchone(), conn.execute(PID_QUERY).fetchone()]
                    conn.execute("COMMIT")
                else:
                    with conn.transaction():
                        rows = [conn.execute(PID_QUERY).fetchone()]
            except Exception as e:
                failures.add(f"client {who} round {i}: {type(e).__name__}: {e}")
                return
            for row in rows:
                pids.add(row[-1])
                if row[:-1] != want:
                    failures.add(f"client {who} round {i} (server pid {row[-1]}): got {row[:-1]!r}, expected {want!r}")


def test_each_client_keeps_its_own_timezone_search_path_and_settings_on_every_server(tx_url, direct_url):
    want_a = _expected_settings(direct_url, CLIENT_A)
    want_b = _expected_settings(direct_url, CLIENT_B)
    assert want_a[:2] == ("America/New_York", "a") and want_b[:2] == ("Asia/Tokyo", "b")
    assert want_a != want_b
    failures = Failures()
    pids_a, pids_b = set(), set()
    with Fillers(tx_url, 3, Failures()) as fillers:
        threads = [
            threading.Thread(target=_settings_client, args=(tx_url, "A", CLIENT_A, want_a, 200, failures, pids_a)),
            threading.Thread(target=_settings_client, args=(tx_url, "B", CLIENT_B, want_b, 200, failures, pids_b)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    failures.check("settings isolation")
    assert fillers.rounds > 0
    # the point of the test: both clients really moved between servers
    assert len(pids_a) >= 2 and len(pids_b) >= 2, f"servers seen: A {pids_a}, B {pids_b}"


# ------------------------------------------------------ 5. SET LOCAL

SESSION_QUERY = "SELECT current_setting('TimeZone'), (SELECT v FROM t), pg_backend_pid()"


def test_set_local_inside_a_transaction_does_not_outlive_its_commit(tx_url):
    failures = Failures()
    pids = set()
    with Fillers(tx_url, 4, Failures()):
        with psycopg.connect(tx_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
            conn.execute("SET TimeZone TO 'Europe/Paris'")
            conn.execute("SET search_path TO tx_a, public")
            for i in range(60):
                conn.execute("BEGIN")
                conn.execute("SET LOCAL TimeZone TO 'Asia/Kolkata'")
                conn.execute("SET LOCAL search_path TO tx_b, public")
                row = conn.execute(SESSION_QUERY).fetchone()
                if row[:2] != ("Asia/Kolkata", "b"):
                    failures.add(f"round {i} inside the transaction: {row!r}")
                conn.execute("ROLLBACK" if i % 4 == 3 else "COMMIT")
                for j in range(3):
                    row = conn.execute(SESSION_QUERY).fetchone()
                    pids.add(row[2])
                    if row[:2] != ("Europe/Paris", "a"):
                        failures.add(f"round {i} statement {j} after COMMIT (server pid {row[2]}): {row!r}")
    failures.check("SET LOCAL")
    assert len(pids) >= 2, f"the client never changed servers: {pids}"


def test_a_plain_set_undone_by_rollback_stays_undone_and_a_committed_one_stays(tx_url):
    failures = Failures()
    with Fillers(tx_url, 4, Failures()):
        with psycopg.connect(tx_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
            conn.execute("SET TimeZone TO 'Europe/Paris'")
            for i in range(30):
                conn.execute("BEGIN")
                conn.execute("SET TimeZone TO 'Asia/Kolkata'")
                conn.execute("ROLLBACK")
                for j in range(3):
                    tz = conn.execute("SELECT current_setting('TimeZone')").fetchone()[0]
                    if tz != "Europe/Paris":
                        failures.add(f"round {i} statement {j} after ROLLBACK: {tz!r}")
            conn.execute("BEGIN")
            conn.execute("SET TimeZone TO 'Asia/Kolkata'")
            conn.execute("COMMIT")
            for j in range(10):
                tz = conn.execute("SELECT current_setting('TimeZone')").fetchone()[0]
                if tz != "Asia/Kolkata":
                    failures.add(f"statement {j} after a committed SET: {tz!r}")
    failures.check("SET in a transaction")


# --------------------------------- 6. prepare, close, re-prepare the same SQL


async def _asyncpg_reprepare_client(url, c, failures):
    sql = "SELECT $1::int4 * 3, $2::text || '!'"
    named_sql = "SELECT $1::int4 - 1"
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
    names = set()
    try:
        for i in range(100):
            try:
                async with conn.transaction():
                    stmt = await conn.prepare(sql)
                    names.add(stmt.get_name())
                    row = await stmt.fetchrow(i, f"c{c}")
                    if tuple(row) != (i * 3, f"c{c}!"):
                        failures.add(f"asyncpg client {c} transaction {i}: {tuple(row)!r}")
                # dropping the last reference makes asyncpg Close the statement
                # on its next prepare
                del stmt
                gc.collect()
                if i % 10 == 0:
                    # the same client-side name again, after a Close of it
                    named = await conn.prepare(named_sql, name=f"tx_named_{c}")
                    got = await named.fetchval(i)
                    if got != i - 1:
                        failures.add(f"asyncpg client {c} named statement in round {i}: {got!r}")
                    del named
                    gc.collect()
                    # any new statement makes asyncpg send the pending Close
                    throwaway = await conn.prepare("SELECT 1")
                    del throwaway
                    gc.collect()
                # and outside a transaction
                got = await conn.fetchval(sql.replace("* 3", "* 5"), i, "x")
                if got != i * 5:
                    failures.add(f"asyncpg client {c} round {i} after close: {got!r}")
            except Exception as e:
                failures.add(f"asyncpg client {c} transaction {i}: {type(e).__name__}: {e}")
                return
    finally:
        await conn.close()
    if len(names) < 100:
        failures.add(f"asyncpg client {c} reused statement names: {len(names)} names for 100 prepares")


def test_asyncpg_statements_prepared_dropped_and_prepared_again_keep_working_across_100_transactions(tx_url):
    failures = Failures()

    async def go():
        await asyncio.gather(*[_asyncpg_reprepare_client(tx_url, c, failures) for c in range(4)])

    with Fillers(tx_url, 2, Failures()):
        asyncio.run(go())
    failures.check("asyncpg prepare / close / prepare again")


def test_psycopg3_statements_evicted_from_its_prepared_cache_are_prepared_again_across_100_transactions(tx_url):
    # prepared_max 3 with 10 query texts: psycopg Closes the least recently
    # used statement all the time and prepares the texts under new names
    failures, done = _run_threads(_psycopg3_worker, 6, tx_url, 300, binary=False, prepared_max=3)
    failures.check("psycopg 3 with a small prepared cache")
    assert sum(done) == 6 * 300, done
    with psycopg.connect(tx_url, autocommit=True, prepare_threshold=0, connect_timeout=CONNECT_TIMEOUT) as conn:
        conn.prepared_max = 2
        rng = random.Random(6)
        for i in range(100):
            with conn.transaction():
                for _ in range(2):
                    sql, make, expect, _ = MIX_PSYCOPG[rng.randrange(len(MIX_PSYCOPG))]
                    args = make(rng)
                    row = conn.execute(sql, psycopg_args(args)).fetchone()
                    assert row == expect(*args), (i, sql, args)


def test_psycopg3_evicting_with_sql_deallocate_as_before_libpq_17_keeps_working(tx_url, monkeypatch):
    # with libpq before 17 psycopg evicts with SQL `DEALLOCATE _pg3_N` (Rails
    # does the same): the server knows the statement by pgsift's shared name
    import psycopg._connection_base as base

    monkeypatch.setattr(base, "_HAS_SEND_CLOSE", False)
    failures, done = _run_threads(_psycopg3_worker, 4, tx_url, 200, binary=False, prepared_max=3)
    failures.check("psycopg 3 evicting with SQL DEALLOCATE")
    assert sum(done) == 4 * 200, done
    # an application's own DEALLOCATE, sent as a one-off (unnamed) statement
    with psycopg.connect(tx_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        assert conn.execute("SELECT 1 + %s", (1,), prepare=True).fetchone() == (2,)  # _pg3_0
        # inside a transaction that failed: Postgres's own error
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            with conn.transaction():
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute("SELECT 1/0")
                conn.execute("DEALLOCATE _pg3_0")
    with psycopg.connect(tx_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        assert conn.execute("SELECT 1 + %s", (1,), prepare=True).fetchone() == (2,)  # _pg3_0
        for _ in range(3):  # on whichever server
            assert conn.execute("SELECT 1 + %s", (2,), prepare=True).fetchone() == (3,)
        conn.execute("DEALLOCATE _pg3_0")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("SELECT 1 + %s", (3,))  # psycopg still binds _pg3_0


# ------------------------------------------ 7. errors inside transactions


def test_a_division_by_zero_in_an_asyncpg_prepared_statement_inside_a_transaction_leaves_the_connection_usable(
    tx_url,
):
    async def go():
        conn = await asyncpg.connect(tx_url, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
        try:
            rng = random.Random(7)
            div = await conn.prepare("SELECT 10 / $1::int4")
            for round_ in range(5):
                tx = conn.transaction()
                await tx.start()
                assert await div.fetchval(5) == 2
                with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                    await div.fetchval(0)
                # a statement the client has not used yet, in the failed transaction
                with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
                    await conn.fetchval(f"SELECT {round_}::int4 + $1::int4", 1)
                await tx.rollback()
                for i in range(50):
                    sql, make, expect, _ = MIX_ASYNCPG[rng.randrange(len(MIX_ASYNCPG))]
                    args = make(rng)
                    row = await conn.fetchrow(sql, *args)
                    assert tuple(row) == expect(*args), (round_, i, sql, args)
                # the statement first seen in the failed transaction works now
                assert await conn.fetchval(f"SELECT {round_}::int4 + $1::int4", 1) == round_ + 1
                assert await div.fetchval(2) == 5
        finally:
            await conn.close()

    with Fillers(tx_url, 3, Failures()):
        asyncio.run(go())


def test_an_error_in_a_psycopg3_pipeline_leaves_the_connection_and_its_prepared_statements_usable(tx_url):
    with Fillers(tx_url, 3, Failures()):
        with psycopg.connect(tx_url, autocommit=True, prepare_threshold=0, connect_timeout=CONNECT_TIMEOUT) as conn:
            rng = random.Random(8)
            pids = set()
            for round_ in range(5):
                fresh = f"SELECT {round_}::int4 * %s::int4"
                with pytest.raises(psycopg.errors.DivisionByZero):
                    with conn.pipeline():
                        conn.execute("SELECT 1 + %s::int4", (1,))
                        conn.execute("SELECT 10 / %s::int4", (0,))
                        # let the error reach pgsift before the rest of the
                        # pipeline: Parse, Bind, Describe, Execute of a new
                        # statement, then Sync, all skipped by the server
                        time.sleep(0.1)
                        conn.execute(fresh, (3,))
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                for i in range(50):
                    sql, make, expect, _ = MIX_PSYCOPG[rng.randrange(len(MIX_PSYCOPG))]
                    args = make(rng)
                    row = conn.execute(sql, psycopg_args(args)).fetchone()
                    assert row == expect(*args), (round_, i, sql, args)
                assert conn.execute(fresh, (3,)).fetchone() == (round_ * 3,)
                assert conn.execute("SELECT 10 / %s::int4", (5,)).fetchone() == (2,)
                # and the same inside an explicit transaction block
                with pytest.raises(psycopg.errors.DivisionByZero):
                    with conn.transaction():
                        conn.execute("SELECT 10 / %s::int4", (0,))
                assert conn.execute(fresh, (4,)).fetchone() == (round_ * 4,)
                # and the client is not stuck on one server: the fillers'
                # transactions end at moments of their own, and a client
                # that releases its server lands on one they released sooner
                # or later (random pauses keep the two from running in step,
                # which the idle list's most-recent-first order would
                # otherwise turn into the same server every time)
                for _ in range(400):
                    pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
                    if len(pids) >= 2:
                        break
                    time.sleep(rng.random() * 0.004)
            assert len(pids) >= 2, f"the client never changed servers after the failed pipelines: {pids}"
