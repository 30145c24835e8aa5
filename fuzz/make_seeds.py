#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/<target>/ (run from anywhere).

Seeds are plain files so they can be copied into a fuzz/corpus/<target>/
directory (git-ignored) before a run; see fuzz/README.md.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def be32(n):
    return struct.pack(">I", n)


def packet(body):
    """A startup-phase packet: length word (counting itself) + body."""
    return be32(len(body) + 4) + body


def startup(params, major=3, minor=0):
    body = be32((major << 16) | minor)
    for k, v in params:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    return packet(body + b"\0")


def msg(tag, body=b""):
    """A regular message: type byte, length (counting itself), body."""
    return tag + be32(len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


# --- startup_packet: the raw bytes a client sends first ---------------------
SSL = packet(be32(80877103))
GSS = packet(be32(80877104))
PSQL = [("user", "blog"), ("database", "blog"), ("application_name", "psql"),
        ("client_encoding", "UTF8")]
write("startup_packet", "startup_psql", startup(PSQL))
write("startup_packet", "ssl_request", SSL)
write("startup_packet", "gssenc_request", GSS)
write("startup_packet", "ssl_then_startup", SSL + startup(PSQL))
write("startup_packet", "gss_ssl_startup", GSS + SSL + startup([("user", "blog")]))
write("startup_packet", "cancel_request",
      packet(be32(80877102) + struct.pack(">i", 4242) + bytes([0x12, 0x34, 0x56, 0x78])))
write("startup_packet", "cancel_request_3_2",
      packet(be32(80877102) + struct.pack(">i", 4242) + bytes(range(32))))
write("startup_packet", "startup_options", startup([
    ("user", "blog"), ("database", "blog"),
    ("options", r"-c search_path=a,b --statement-timeout=5s -cTimeZone=UTC -c x=a\ b"),
]))
write("startup_packet", "startup_3_2_pq", startup(
    [("user", "blog"), ("_pq_.test_option", "on")], minor=2))
write("startup_packet", "startup_replication", startup(
    [("user", "blog"), ("replication", "database")]))
write("startup_packet", "bad_length", be32(3) + b"\0\0\0\0")
write("startup_packet", "bad_layout", packet(be32(196608) + b"user\0blog"))

# --- message_framing: 4 control bytes (little-endian u32), then the stream --
DEFAULT = struct.pack("<I", 3)      # max 256 MiB
UNLIMITED = struct.pack("<I", 0)    # max usize::MAX
SMALL = struct.pack("<I", (24 << 2) | 2)  # max 24 bytes, replay chunk 1
CHUNKY = struct.pack("<I", (7 << 24) | 3)  # max 256 MiB, replay chunk 8

frontend_simple = msg(b"Q", cstr("SELECT 1"))
frontend_extended = (
    msg(b"P", cstr("s1") + cstr("SELECT * FROM posts WHERE id = $1") + b"\0\x01" + be32(23))
    + msg(b"B", cstr("") + cstr("s1") + b"\0\x00" + b"\0\x01" + be32(2) + b"42" + b"\0\x00")
    + msg(b"D", b"P" + cstr(""))
    + msg(b"E", cstr("") + be32(0))
    + msg(b"S")
)
backend_login = (
    msg(b"R", be32(0))
    + msg(b"S", cstr("server_version") + cstr("16.4"))
    + msg(b"S", cstr("client_encoding") + cstr("UTF8"))
    + msg(b"K", struct.pack(">ii", 4242, 0x12345678))
    + msg(b"Z", b"I")
)
backend_rows = (
    msg(b"T", b"\0\x01" + cstr("id") + be32(0) + b"\0\0" + be32(23) + b"\0\x04" + b"\xff\xff\xff\xff" + b"\0\0")
    + msg(b"D", b"\0\x01" + be32(1) + b"1")
    + msg(b"D", b"\0\x01" + b"\xff\xff\xff\xff")
    + msg(b"C", cstr("SELECT 2"))
    + msg(b"Z", b"I")
)
write("message_framing", "frontend_simple_query", DEFAULT + frontend_simple)
write("message_framing", "frontend_extended", CHUNKY + frontend_extended)
write("message_framing", "backend_login", DEFAULT + backend_login)
write("message_framing", "backend_rows_partial", CHUNKY + backend_rows + b"D\0\0\0\x20\0\x01")
write("message_framing", "backend_rows_unlimited", UNLIMITED + backend_rows)
write("message_framing", "too_large_small_limit", SMALL + frontend_simple + msg(b"Q", cstr("SELECT 'a long statement'")))
write("message_framing", "bad_length", DEFAULT + msg(b"S") + b"Q\0\0\0\x03")
write("message_framing", "oversized_header", DEFAULT + b"d\x7f\xff\xff\xff")

# --- error_fields: ErrorResponse/NoticeResponse bodies (after the header) ---
write("error_fields", "auth_failed",
      b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"blog\"\0"
      b"Fauth.c\0L326\0Rauth_failed\0\0")
write("error_fields", "undefined_table",
      b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0"
      b"Fparse_relation.c\0L1449\0RparserOpenTable\0\0")
write("error_fields", "notice",
      b"SNOTICE\0VNOTICE\0C00000\0Mtable \"t\" does not exist, skipping\0"
      b"Ftablecmds.c\0L1300\0RDropErrorMsgNonExistent\0\0")
write("error_fields", "localized_no_terminator",
      "SFEHLER\0VERROR\0C57014\0Mstorniere Anfrage wegen Benutzeraufforderung".encode())

# --- scram_verifier: config password strings --------------------------------
V = ("SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$"
     "6o6fEsiTSFwaTPGOfK4GC0JjrP2ZImKMUU/sStYjZP4=:qH7OTPTnv/ZjPVJ7T3LZi/Pw/ZkQr+K6vqbTsFTGaXc=")
write("scram_verifier", "postgres_verifier", V)
write("scram_verifier", "truncated", "SCRAM-SHA-256$4096:abc")
write("scram_verifier", "zero_iterations", V.replace("$4096:", "$0:"))
write("scram_verifier", "md5", "md5" + "0123456789abcdef" * 2)

# --- config_yaml ------------------------------------------------------------
with open(os.path.join(HERE, "..", "config.yaml"), "rb") as f:
    write("config_yaml", "repo_config.yaml", f.read())
write("config_yaml", "minimal.yaml", "listen: 127.0.0.1:6432\n")
write("config_yaml", "users_and_tls.yaml", f"""\
tls:
  cert: server.crt
  key: server.key
  mode: require
users:
  - name: blog
    password: "{V}"
  - name: old
    password: md5{"0123456789abcdef" * 2}
databases:
  blog:
    pool_mode: session
    pool_size: 2
    min_pool_size: 3
    port: 0
  pgsift: {{}}
pool:
  max_message_size: 512
  connect_timeout: 0s
logging:
  level: "pgsift=debug,tokio=warn"
  format: json
""")
write("config_yaml", "empty.yaml", "")

# --- units --------------------------------------------------------------------
for i, s in enumerate(["250ms", "5s", "10m", "1h", "2d", "1.5s", "100us", "30 min",
                       "64KiB", "256MiB", "1GiB", "512", "1 kb", "12 furlongs"]):
    write("units", f"u{i:02}", s)

# --- extended_messages ----------------------------------------------------------
def parse_msg(name, query, oids=()):
    body = cstr(name) + cstr(query) + struct.pack(">H", len(oids))
    for o in oids:
        body += be32(o)
    return msg(b"P", body)


def bind_msg(portal, stmt, params=()):
    body = cstr(portal) + cstr(stmt) + struct.pack(">H", 0) + struct.pack(">H", len(params))
    for p in params:
        body += be32(len(p)) + p
    return msg(b"B", body + struct.pack(">H", 0))


EXEC = msg(b"E", cstr("") + be32(0))
SYNC = msg(b"S")
write("extended_messages", "unnamed_select.bin",
      parse_msg("", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", [23])
      + bind_msg("", "", [b"42"]) + msg(b"D", b"P" + cstr("")) + EXEC + SYNC)
write("extended_messages", "named_insert.bin",
      parse_msg("s1", "insert into t values ($1)") + bind_msg("p", "s1", [b"x"]) + EXEC + SYNC)
write("extended_messages", "utility.bin", parse_msg("", "  (SET search_path = a") + SYNC)
write("extended_messages", "close_describe.bin",
      msg(b"C", b"S" + cstr("s1")) + msg(b"D", b"S" + cstr("")) + SYNC)
write("extended_messages", "with_cte.bin", b"P" + b"WITH x AS (SELECT 1) TABLE x\0\0\0")
