// The PostgreSQL JDBC driver through pgsift (tests/clients.rs runs it with
// `java -cp postgresql.jar JdbcCheck.java URL USER PASSWORD`): common types
// read back as written, server-side prepared statements (the driver
// prepares a statement by name from its 5th execution) used by several
// connections at once, batches, and rollback. Prints "ok" and exits 0, or
// prints what differed and exits 1.

import java.math.BigDecimal;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;

public class JdbcCheck {
    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static Connection connect(String[] args) throws Exception {
        return DriverManager.getConnection(args[0], args[1], args[2]);
    }

    /// Each common type, written as a parameter and read back.
    static void types(Connection c) throws Exception {
        try (PreparedStatement ps = c.prepareStatement(
                "SELECT ?::int, ?::numeric, ?::text, ?::bytea, ?::timestamptz, ?::int[], ?::json, ?::text")) {
            OffsetDateTime at = OffsetDateTime.of(2026, 11, 25, 12, 30, 15, 123456000, ZoneOffset.UTC);
            byte[] bytes = {0, 1, (byte) 0xff, 39, 92};
            for (int round = 0; round < 8; round++) {
                ps.setInt(1, -42 - round);
                ps.setBigDecimal(2, new BigDecimal("12345678901234567890.0123456789"));
                ps.setString(3, "naïve café ✓ 日本 " + round);
                ps.setBytes(4, bytes);
                ps.setObject(5, at);
                ps.setArray(6, c.createArrayOf("int4", new Integer[] {1, null, 3}));
                ps.setString(7, "{\"a\": [1, 2, {\"b\": null}]}");
                ps.setNull(8, java.sql.Types.VARCHAR);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "a row");
                    check(rs.getInt(1) == -42 - round, "int");
                    check(rs.getBigDecimal(2).equals(new BigDecimal("12345678901234567890.0123456789")), "numeric");
                    check(rs.getString(3).equals("naïve café ✓ 日本 " + round), "text: " + rs.getString(3));
                    check(Arrays.equals(rs.getBytes(4), bytes), "bytea");
                    check(rs.getObject(5, OffsetDateTime.class).isEqual(at), "timestamptz");
                    Array arr = rs.getArray(6);
                    check(Arrays.equals((Integer[]) arr.getArray(), new Integer[] {1, null, 3}), "int[]");
                    check(rs.getString(7).equals("{\"a\": [1, 2, {\"b\": null}]}"), "json");
                    check(rs.getString(8) == null && rs.wasNull(), "NULL");
                    check(!rs.next(), "one row");
                }
            }
        }
    }

    /// One connection's share of the concurrent work: a prepared lookup run
    /// past the driver's prepare threshold, a batch, a rollback.
    static void worker(String[] args, int id) throws Exception {
        try (Connection c = connect(args)) {
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2, pg_backend_pid()")) {
                for (int i = 0; i < 60; i++) {
                    ps.setInt(1, i + id);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next() && rs.getInt(1) == 2 * (i + id), "prepared lookup " + i);
                    }
                }
            }
            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_check (worker, n, label) VALUES (?, ?, ?)")) {
                for (int n = 0; n < 200; n++) {
                    ins.setInt(1, id);
                    ins.setInt(2, n);
                    ins.setString(3, "row " + n);
                    ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                check(counts.length == 200, "batch counts");
            }
            c.commit();
            try (Statement st = c.createStatement()) {
                st.executeUpdate("DELETE FROM jdbc_check WHERE worker = " + id + " AND n < 100");
            }
            c.rollback();
            c.setAutoCommit(true);
            try (PreparedStatement ps = c.prepareStatement("SELECT count(*), sum(n) FROM jdbc_check WHERE worker = ?")) {
                for (int i = 0; i < 10; i++) {
                    ps.setInt(1, id);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next() && rs.getLong(1) == 200 && rs.getLong(2) == 199 * 100, "batch rows after rollback");
                    }
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = connect(args); Statement st = c.createStatement()) {
            types(c);
            st.execute("DROP TABLE IF EXISTS jdbc_check");
            st.execute("CREATE TABLE jdbc_check (worker int, n int, label text)");
        }
        List<Thread> threads = new ArrayList<>();
        AtomicReference<Throwable> failure = new AtomicReference<>();
        for (int id = 0; id < 6; id++) {
            final int worker = id;
            Thread t = new Thread(() -> {
                try {
                    worker(args, worker);
                } catch (Throwable e) {
                    failure.compareAndSet(null, e);
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        if (failure.get() != null) {
            failure.get().printStackTrace();
            System.exit(1);
        }
        System.out.println("ok");
    }
}
