"""Real Python drivers must see the same data through pgsift as directly.

Run by tests/python_drivers.rs, which starts PostgreSQL and a session-mode
pgsift and sets:

  PGSIFT_URL  libpq URL through the proxy   (user blog, database app)
  DIRECT_URL  libpq URL straight to Postgres (user blog, database app)

Every test runs the same work once through each URL and compares the results
exactly (values, their Python types, column names and type OIDs; NaN
compares equal to NaN), and for a failure names the first row that differs.
"""

import asyncio
import io
import os
import uuid
from decimal import Decimal

import asyncpg
import psycopg
import psycopg2
import psycopg2.errors
import pytest

DRIVERS = ["psycopg2", "psycopg3-text", "psycopg3-binary", "asyncpg"]
CONNECT_TIMEOUT = 10


def _url(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; run these tests through `cargo test --test python_drivers`")
    return value


@pytest.fixture(scope="session")
def proxy_url():
    return _url("PGSIFT_URL")


@pytest.fixture(scope="session")
def direct_url():
    return _url("DIRECT_URL")


# ---------------------------------------------------------------- helpers


def canon(row):
    """A comparable form of one row: exact, type-aware, NaN-safe.

    repr keeps the type and every digit (Decimal('1.50') vs Decimal('1.5'),
    -0.0 vs 0.0, 1 vs 1.0 vs True, nan, tz offsets of datetimes); psycopg2's
    bytea memoryviews become bytes first.
    """
    return repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row))


def canon_rows(rows):
    return [canon(r) for r in rows]


def assert_same_rows(through, direct):
    """Equal canonical rows; on failure names the first row that differs."""
    assert len(through) == len(direct), f"{len(through)} rows through pgsift, {len(direct)} directly"
    for i, (a, b) in enumerate(zip(through, direct)):
        assert a == b, f"row {i} differs:\n  pgsift: {a}\n  direct: {b}"


def run(coro):
    return asyncio.run(coro)


def direct_exec(direct_url, sql):
    conn = psycopg2.connect(direct_url, connect_timeout=CONNECT_TIMEOUT)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def table(direct_url, request):
    """A fresh table name unique to this test; dropped afterwards."""
    name = "py_" + request.node.originalname[5:30] + "_" + uuid.uuid4().hex[:8]
    yield name
    direct_exec(direct_url, f"DROP TABLE IF EXISTS {name}")


def fetch_rows(driver, url, sql):
    """(column names and type OIDs, canonical rows) of `sql` read with `driver`."""
    if driver == "psycopg2":
        conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                rows = canon_rows(cur.fetchall())
                return [(d.name, d.type_code) for d in cur.description], rows
        finally:
            conn.close()
    if driver.startswith("psycopg3"):
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT) as conn:
            with conn.cursor(binary=driver.endswith("binary")) as cur:
                cur.execute(sql)
                rows = canon_rows(cur.fetchall())
                return [(d.name, d.type_code) for d in cur.description], rows
    if driver == "asyncpg":

        async def go():
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
            try:
                stmt = await conn.prepare(sql)
                rows = canon_rows(await stmt.fetch())
                return [(a.name, a.type.oid) for a in stmt.get_attributes()], rows
            finally:
                await conn.close()

        return run(go())
    raise AssertionError(driver)


def assert_same_result(driver, proxy_url, direct_url, sql, expected_rows):
    through_cols, through = fetch_rows(driver, proxy_url, sql)
    direct_cols, direct = fetch_rows(driver, direct_url, sql)
    assert len(direct) == expected_rows
    assert through_cols == direct_cols
    assert_same_rows(through, direct)


# ------------------------------------------------------- every common type

TYPES_DDL = """
CREATE TABLE {t} (
    id   int4 PRIMARY KEY,
    i2   int2,
    i4   int4,
    i8   int8,
    n    numeric,
    f4   float4,
    f8   float8,
    vc   varchar(40),
    tx   text,
    ba   bytea,
    ts   timestamp,
    tz   timestamptz,
    d    date,
    tm   time,
    iv   interval,
    bo   bool,
    u    uuid,
    ia   int4[],
    ta   text[],
    js   json,
    jb   jsonb
)
"""

TYPES_ROWS = r"""
INSERT INTO {t} VALUES
(1, 0, 0, 0, 0, 0, 0, '', '', '', '2000-01-01 00:00:00', '2000-01-01 00:00:00+00', '2000-01-01',
 '00:00:00', '0', false, '00000000-0000-0000-0000-000000000000', '{{}}', '{{}}', '{{}}', '{{}}'),
(2, 32767, 2147483647, 9223372036854775807,
 '123456789012345678901234567890123456789012345678901234567890.000000000000000000000000000001',
 3.4028235e38, 1.7976931348623157e308, 'héllo wörld', '😀 emoji 🎉, 漢字かな交じり文, e' || U&'\0301' || ' combining',
 '\x00010200ff00'::bytea, '2024-02-29 23:59:59.999999', '2024-02-29 12:34:56.789012+05:30', '2024-02-29',
 '23:59:59.999999', '1 year 2 mons 3 days 04:05:06.789012', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
 '{{1,NULL,3}}', '{{a,NULL,"with, comma","quo\"te","",NULL,"😀"}}',
 '{{"b": 1, "a": [1, 2.50, null, "x"], "u": "\u00e9😀"}}', '{{"b": 1, "a": [1, 2.50, null, "x"], "u": "\u00e9😀"}}'),
(3, -32768, -2147483648, -9223372036854775808, '-0.000000000000000000000000000000000000000000000000001',
 -1.17549435e-38, 5e-324, 'x', E'quote''s "and" \\ backslash\ttab\nnewline', '\x00'::bytea,
 '0001-01-01 00:00:00', '1970-01-01 00:00:00+00', '0001-01-01', '12:00:00', '-3 days -00:00:01.5', false,
 'ffffffff-ffff-ffff-ffff-ffffffffffff', '{{{{1,2}},{{3,4}}}}', '{{NULL}}', 'null', '"just a string"'),
(4, 1, 1, 1, 'NaN', 'NaN', 'NaN', NULL, 'NaN', '\x'::bytea, '9999-12-31 23:59:59', '2038-01-19 03:14:08+00',
 '9999-12-31', '00:00:00.000001', '1 microsecond', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12',
 '{{-2147483648,2147483647}}', '{{"",""}}', '[1, "two", {{"three": 3}}]', '[1, "two", {{"three": 3}}]'),
(5, -1, -1, -1, '1.50', 'Infinity', '-Infinity', 'y', 'ordinary', decode(repeat('00ab', 1000), 'hex'),
 '2000-01-01 00:00:00.5', '1999-12-31 23:59:59.5-08', '2000-02-29', '01:02:03', '-1 year -2 mons', false,
 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13', '{{0}}', E'{{"tab\there","new\nline"}}', '1.5e300', '1.5e300'),
(6, 7, 7, 7, '1e-100', 0.1, 0.1, 'z', repeat('长', 5000), NULL, NULL, '1900-06-15 12:00:00+01', NULL,
 NULL, '100 years', NULL, NULL, NULL, NULL, '{{"nested": {{"deep": [[[]]]}}}}', '{{"nested": {{"deep": [[[]]]}}}}'),
(7, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL)
"""

TYPES_COUNT = 7


@pytest.fixture(scope="module")
def types_table(direct_url):
    name = "py_types_" + uuid.uuid4().hex[:8]
    direct_exec(direct_url, TYPES_DDL.format(t=name))
    direct_exec(direct_url, TYPES_ROWS.format(t=name))
    yield name
    direct_exec(direct_url, f"DROP TABLE IF EXISTS {name}")


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_common_type_reads_the_same_through_pgsift_as_directly(driver, types_table, proxy_url, direct_url):
    sql = f"SELECT * FROM {types_table} ORDER BY id"
    assert_same_result(driver, proxy_url, direct_url, sql, TYPES_COUNT)


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_common_type_as_literals_reads_the_same_through_pgsift_as_directly(driver, proxy_url, direct_url):
    # The same values as a bare SELECT of literals: no table, every column's
    # type comes straight from the expression.
    sql = (
        "SELECT 1::int2, 2::int4, 3::int8, 'NaN'::numeric, '1e-300'::numeric, 'NaN'::float8, "
        "'😀漢字e' || U&'\\0301' AS t, '\\x00ff00'::bytea, '2024-01-02 03:04:05.678+00'::timestamptz, "
        "'2024-01-02'::date, '3 days 04:00'::interval, true, gen_random_uuid() IS NOT NULL, "
        "ARRAY[1, NULL]::int[], ARRAY['a', NULL]::text[], '{\"k\": [1]}'::json, '{\"k\": [1]}'::jsonb, "
        "NULL::int, NULL::text, NULL::bytea, NULL::jsonb, NULL::int[]"
    )
    assert_same_result(driver, proxy_url, direct_url, sql, 1)


# ------------------------------------------------------------- big results

BIG_ROWS = 100_000
BIG_SQL = (
    "SELECT g AS id, 'row ' || g || ' ✓' AS label, g::numeric / 7 AS ratio, g * 1.25::float8 AS f, "
    "(g % 2 = 0) AS even, CASE WHEN g % 10 = 0 THEN NULL ELSE repeat('x', g % 50) END AS pad, "
    f"decode(lpad(to_hex(g), 8, '0'), 'hex') AS raw FROM generate_series(1, {BIG_ROWS}) g"
)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_hundred_thousand_row_result_reads_the_same_through_pgsift_as_directly(driver, proxy_url, direct_url):
    assert_same_result(driver, proxy_url, direct_url, BIG_SQL, BIG_ROWS)


def test_a_hundred_thousand_row_result_streams_through_a_psycopg2_server_side_cursor(proxy_url, direct_url):
    def read(url):
        conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT)
        try:
            with conn.cursor(name="big") as cur:
                cur.itersize = 7_000
                cur.execute(BIG_SQL)
                return canon_rows(cur)
        finally:
            conn.close()

    direct = read(direct_url)
    assert len(direct) == BIG_ROWS
    assert_same_rows(read(proxy_url), direct)


# ------------------------------------------------------------------ COPY

COPY_ROWS = 100_000
SPECIALS = ["plain", "tab\there", "new\nline", "back\\slash", "😀", "漢字", "e\u0301", "", "cr\rhere", "\\N"]


def copy_data():
    """COPY_ROWS rows of (id, label, amount, payload) with NULLs sprinkled in."""
    rows = []
    for i in range(1, COPY_ROWS + 1):
        label = None if i % 97 == 0 else f"row {i} {SPECIALS[i % len(SPECIALS)]}"
        amount = None if i % 89 == 0 else Decimal(f"{'-' if i % 3 == 0 else ''}{i}.{i % 100:02d}")
        if i % 83 == 0:
            payload = None
        elif i % 79 == 0:
            payload = b""
        else:
            payload = bytes([i % 256, 0, (i * 7) % 256, 0])
        rows.append((i, label, amount, payload))
    return rows


def copy_text(rows):
    """`rows` in COPY text format, exactly as the server prints them."""

    def field(v):
        if v is None:
            return "\\N"
        if isinstance(v, bytes):
            return "\\\\x" + v.hex()
        s = str(v)
        return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    return "".join("\t".join(field(v) for v in row) + "\n" for row in rows)


COPY_DDL = "CREATE TABLE {t} (id int4 PRIMARY KEY, label text, amount numeric, payload bytea)"


def direct_copy_text(direct_url, table):
    conn = psycopg2.connect(direct_url, connect_timeout=CONNECT_TIMEOUT)
    try:
        with conn.cursor() as cur:
            buf = io.StringIO()
            cur.copy_expert(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT", buf)
            return buf.getvalue()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def copy_rows():
    rows = copy_data()
    return rows, copy_text(rows)


def test_psycopg2_copy_round_trips_a_hundred_thousand_rows_through_pgsift(table, copy_rows, proxy_url, direct_url):
    rows, text = copy_rows
    conn = psycopg2.connect(proxy_url, connect_timeout=CONNECT_TIMEOUT)
    try:
        with conn.cursor() as cur:
            cur.execute(COPY_DDL.format(t=table))
            cur.copy_expert(f"COPY {table} FROM STDIN", io.StringIO(text))
            assert cur.rowcount == COPY_ROWS
        conn.commit()
        with conn.cursor() as cur:
            out = io.StringIO()
            cur.copy_expert(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT", out)
            assert cur.rowcount == COPY_ROWS
        conn.commit()
        # the connection still works normally after both COPYs
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone() == (COPY_ROWS,)
    finally:
        conn.close()
    assert out.getvalue() == text
    assert direct_copy_text(direct_url, table) == text


def test_psycopg3_binary_copy_round_trips_a_hundred_thousand_rows_through_pgsift(
    table, copy_rows, proxy_url, direct_url
):
    rows, text = copy_rows
    types = ["int4", "text", "numeric", "bytea"]
    with psycopg.connect(proxy_url, connect_timeout=CONNECT_TIMEOUT) as conn:
        with conn.cursor() as cur:
            cur.execute(COPY_DDL.format(t=table))
            with cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == COPY_ROWS
        conn.commit()
        with conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
                copy.set_types(types)
                back_binary = list(copy.rows())
            with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
                back_text = b"".join(bytes(block) for block in copy)
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    assert_same_rows(canon_rows(back_binary), canon_rows(rows))
    assert back_text.decode() == text
    assert direct_copy_text(direct_url, table) == text


def test_asyncpg_copy_round_trips_a_hundred_thousand_rows_through_pgsift(table, copy_rows, proxy_url, direct_url):
    rows, text = copy_rows

    async def go():
        conn = await asyncpg.connect(proxy_url, timeout=CONNECT_TIMEOUT)
        try:
            await conn.execute(COPY_DDL.format(t=table))
            status = await conn.copy_records_to_table(table, records=rows, columns=["id", "label", "amount", "payload"])
            assert status == f"COPY {COPY_ROWS}"
            out = io.BytesIO()
            status = await conn.copy_from_query(f"SELECT * FROM {table} ORDER BY id", output=out)
            assert status == f"COPY {COPY_ROWS}"
            fetched = await conn.fetch(f"SELECT * FROM {table} ORDER BY id")
            return out.getvalue(), fetched
        finally:
            await conn.close()

    out, fetched = run(go())
    assert out.decode() == text
    assert_same_rows(canon_rows(fetched), canon_rows(rows))
    assert direct_copy_text(direct_url, table) == text


# ------------------------------------------------- prepared statements

PREPARED_QUERIES = 200


def expected_prepared(i):
    return (i * 2, f"v{i}!", Decimal(i) / 4, i % 3 == 0)


def test_asyncpg_statement_cache_runs_two_hundred_parameterised_queries_correctly(proxy_url):
    async def go():
        conn = await asyncpg.connect(proxy_url, timeout=CONNECT_TIMEOUT, statement_cache_size=100)
        try:
            stmt = await conn.prepare("SELECT $1::int8 + $2::int8 AS s")
            for i in range(PREPARED_QUERIES):
                # a handful of texts the statement cache reuses, plus an
                # explicit prepared statement with varying parameters
                row = await conn.fetchrow(
                    "SELECT $1::int * 2, $2::text || '!', $1::numeric / 4, $1::int % 3 = 0", i, f"v{i}"
                )
                assert tuple(row) == expected_prepared(i)
                assert await conn.fetchval(f"SELECT $1::int + {i % 5}", i) == i + i % 5
                assert await stmt.fetchval(i, -2 * i) == -i
            rows = await conn.fetch("SELECT x FROM generate_series(1, $1::int) x", 3)
            assert [tuple(r) for r in rows] == [(1,), (2,), (3,)]
            prepared = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
            assert prepared >= 6, f"only {prepared} statements prepared server-side"
        finally:
            await conn.close()

    run(go())


def test_psycopg3_with_prepare_threshold_zero_runs_two_hundred_parameterised_queries_correctly(proxy_url):
    with psycopg.connect(proxy_url, connect_timeout=CONNECT_TIMEOUT, prepare_threshold=0, autocommit=True) as conn:
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                for i in range(PREPARED_QUERIES // 2):
                    n = i + (PREPARED_QUERIES // 2 if binary else 0)
                    cur.execute("SELECT %s::int * 2, %s::text || '!', %s::numeric / 4, %s::int %% 3 = 0", (n, f"v{n}", n, n))
                    assert cur.fetchone() == expected_prepared(n)
                    cur.execute(f"SELECT %s::int + {n % 5}", (n,))
                    assert cur.fetchone() == (n + n % 5,)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_prepared_statements")
            (prepared,) = cur.fetchone()
            assert prepared >= 6, f"only {prepared} statements prepared server-side"


def test_psycopg2_runs_two_hundred_parameterised_queries_and_sql_prepare_correctly(proxy_url):
    conn = psycopg2.connect(proxy_url, connect_timeout=CONNECT_TIMEOUT)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("PREPARE doubled(int, text) AS SELECT $1 * 2, $2 || '!', $1::numeric / 4, $1 % 3 = 0")
            for i in range(PREPARED_QUERIES):
                cur.execute("EXECUTE doubled(%s, %s)", (i, f"v{i}"))
                assert cur.fetchone() == expected_prepared(i)
            cur.execute("DEALLOCATE doubled")
    finally:
        conn.close()


# ----------------------------------------------------------------- errors


def psycopg2_division_error(url):
    conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            with pytest.raises(psycopg2.errors.DivisionByZero) as err:
                cur.execute("SELECT 10 / (%s - %s)", (2, 2))
            assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INERROR
            conn.rollback()
            cur.execute("SELECT 42")
            assert cur.fetchone() == (42,)
        conn.commit()
        # and once more outside a transaction
        conn.autocommit = True
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.DivisionByZero):
                cur.execute("SELECT 1 / 0")
            cur.execute("SELECT 43")
            assert cur.fetchone() == (43,)
        e = err.value
        return (e.pgcode, e.diag.severity, e.diag.message_primary, e.diag.context)
    finally:
        conn.close()


def psycopg3_division_error(url, prepare_threshold):
    with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, prepare_threshold=prepare_threshold) as conn:
        with conn.cursor() as cur:
            with pytest.raises(psycopg.errors.DivisionByZero) as err:
                cur.execute("SELECT 10 / (%s::int - %s::int)", (2, 2))
            conn.rollback()
            cur.execute("SELECT 42")
            assert cur.fetchone() == (42,)
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            with pytest.raises(psycopg.errors.DivisionByZero):
                cur.execute("SELECT 1 / 0")
            cur.execute("SELECT %s::int", (43,))
            assert cur.fetchone() == (43,)
        e = err.value
        return (e.sqlstate, e.diag.severity, e.diag.message_primary, e.diag.context)


def asyncpg_division_error(url):
    async def go():
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
        try:
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError) as err:
                await conn.fetchval("SELECT 10 / ($1::int - $2::int)", 2, 2)
            assert await conn.fetchval("SELECT 42") == 42
            tx = conn.transaction()
            await tx.start()
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                await conn.execute("SELECT 1 / 0")
            await tx.rollback()
            assert await conn.fetchval("SELECT $1::int", 43) == 43
            e = err.value
            return (e.sqlstate, e.severity, e.message, e.context)
        finally:
            await conn.close()

    return run(go())


ERROR_CASES = {
    "psycopg2": psycopg2_division_error,
    "psycopg3": lambda url: psycopg3_division_error(url, None),
    "psycopg3-prepared": lambda url: psycopg3_division_error(url, 0),
    "asyncpg": asyncpg_division_error,
}


@pytest.mark.parametrize("driver", list(ERROR_CASES))
def test_division_by_zero_raises_22012_and_the_connection_stays_usable(driver, proxy_url, direct_url):
    through = ERROR_CASES[driver](proxy_url)
    assert through[0] == "22012"
    assert through == ERROR_CASES[driver](direct_url)
