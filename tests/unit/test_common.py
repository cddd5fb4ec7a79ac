import fcntl
import json
import math
import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import db, http, semantics
from services.common.http import Problem
from services.common.idempotency import IdempotencyKeys, StoredResponse


def json_like() -> st.SearchStrategy[bytes]:
    """Documents that are JSON or nearly: nesting, huge numbers, constants Python's json accepts and RFC 8259
    does not, cut short at random."""
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
    documents = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) |
                             st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=30)
    return st.tuples(documents, st.integers(0, 50)).map(
        lambda pair: json.dumps(pair[0]).encode()[: len(json.dumps(pair[0])) - pair[1]])


HEX32 = re.compile(r"[0-9a-f]{32}")


def test_request_id_keeps_a_well_formed_client_id():
    assert http.request_id("abc-123_x.y") == "abc-123_x.y"


@pytest.mark.parametrize("bad", [None, "", "has space", "x" * 129, "new\nline", "semi;colon"])
def test_request_id_replaces_missing_or_unsafe_ids(bad):
    rid = http.request_id(bad)
    assert rid != bad and len(rid) == 32 and int(rid, 16) >= 0


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 50), ("", 50), ("0", 0), ("10000", 10000), ("7", 7)]
)
def test_io_ms_accepts_values_within_bounds(raw, expected):
    assert http.io_ms(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "10001", "abc", "1.5", "1e3"])
def test_io_ms_rejects_everything_else_with_a_400_problem(raw):
    with pytest.raises(http.Problem) as caught:
        http.io_ms(raw)
    assert caught.value.status == 400 and "ms" in caught.value.detail


def test_cpu_n_bounds():
    assert http.cpu_n("1") == 1
    with pytest.raises(http.Problem):
        http.cpu_n("0")
    with pytest.raises(http.Problem):
        http.cpu_n(str(http.CPU_MAX_N + 1))


def test_cpu_work_is_the_polynomial_hash_it_claims_and_depends_on_n():
    prime = 1_000_000_007
    for n in (0, 1, 3, 1000, 1001):  # the same hash from its closed form: sum of i * 31^(n-1-i), mod p
        assert http.cpu_work(n) == sum(i * pow(31, n - 1 - i, prime) for i in range(n)) % prime
    assert http.cpu_work(1000) != http.cpu_work(1001)


def test_problem_document_has_rfc9457_members_and_the_request_id():
    doc = http.Problem(400, "Bad", "why").document("rid1", "/x")
    assert doc == {
        "type": "about:blank", "title": "Bad", "status": 400, "detail": "why", "instance": "/x", "request_id": "rid1"
    }


@pytest.mark.parametrize("accept", [None, "", "*/*", "application/json", "application/*", "text/html, */*;q=0.1"])
def test_acceptable(accept):
    semantics.require_acceptable(accept)


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "application/json;q=0", "image/*"])
def test_not_acceptable_is_406(accept):
    with pytest.raises(http.Problem) as caught:
        semantics.require_acceptable(accept)
    assert caught.value.status == 406


def test_merge_patch_follows_rfc7396():
    target = {"a": "b", "c": {"d": "e", "f": "g"}}
    assert semantics.merge_patch(target, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert semantics.merge_patch({"a": [1]}, {"a": [2]}) == {"a": [2]}
    assert semantics.merge_patch({"a": 1}, ["x"]) == ["x"]


def test_if_match_rules():
    semantics.check_if_match(None, '"a"', required=False)
    semantics.check_if_match('"a"', '"a"', required=True)
    semantics.check_if_match("*", '"a"', required=True)
    for header, current, required, status in [(None, '"a"', True, 428), ('"b"', '"a"', True, 412),
                                              ('W/"a"', '"a"', False, 412), ("*", None, False, 412)]:
        with pytest.raises(http.Problem) as caught:
            semantics.check_if_match(header, current, required)
        assert caught.value.status == status


def test_idempotency_keys_expire(store_at):
    keys = IdempotencyKeys(db.open_database("web", store_at("web")), ttl=3600)
    assert db.run(keys.claim("s", "k", "print-1")) is None
    db.run(keys.finish("s", "k", StoredResponse(201, {"Location": "/x/1"}, b"{}")))
    assert db.run(keys.claim("s", "k", "print-1")).headers == {"Location": "/x/1"}
    expired = IdempotencyKeys(keys.database, ttl=0)  # the same table, read with a zero lifetime
    assert db.run(expired.claim("s", "k", "print-2")) is None  # expired: the key is free for a new request


def _rows(database: db.Database, sql: str) -> list:
    async def query() -> list:
        async with database.session() as conn:
            return (await conn.execute(sql)).fetchall()

    return db.run(query())


def test_fresh_request_ids_are_32_hex_digits_and_distinct_across_batches():
    ids = [http.request_id(None) for _ in range(3 * http.REQUEST_IDS_PER_BATCH)]
    assert len(set(ids)) == len(ids) and all(HEX32.fullmatch(rid) for rid in ids)


def test_request_ids_differ_in_a_forked_worker():
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: report the id it would give the next request
        os.write(write, http.request_id(None).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child != http.request_id(None)


@pytest.mark.parametrize(("real_ip", "peer", "expected"), [
    ("203.0.113.7", "127.0.0.1", "203.0.113.7"),
    ("2001:db8::1", "127.0.0.1", "2001:db8::1"),
    (None, "127.0.0.1", "127.0.0.1"),
    ('1.2.3.4" 200 0 rid=forged', "127.0.0.1", "127.0.0.1"),  # would forge fields in the access line
    ("evil.example", None, "-"),
])
def test_client_address_takes_only_an_address_from_x_real_ip(real_ip, peer, expected):
    assert http.client_address(real_ip, peer) == expected


def test_to_json_is_compact():
    assert http.to_json({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"\\u00e9"}'


def _open_store_after(barrier, path, failures):
    from services.web.store import Store

    barrier.wait()  # every process opens the fresh database at the same moment, like gunicorn's workers
    try:
        Store(path)
    except Exception as error:  # noqa: BLE001 - the failure is the finding
        failures.put(repr(error))


def test_many_processes_open_a_fresh_database_at_once_without_database_is_locked(tmp_path):
    """Booting workers together on a new data directory used to race on switching the file to WAL: SQLite
    answered one of them "database is locked" at once (about one round in three with 8 processes)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for round_ in range(12):
        path = tmp_path / f"round-{round_}" / "web.sqlite3"
        barrier, failures = context.Barrier(8), context.Queue()
        workers = [context.Process(target=_open_store_after, args=(barrier, path, failures)) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert [worker.exitcode for worker in workers] == [0] * 8
        assert failures.empty(), failures.get()
        assert db.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("body, reason", [
    (b"[" * 5000 + b"]" * 5000, "nested deeper"),
    (b"[" * 65 + b"]" * 65, "nested deeper"),
    (b'{"a": NaN}', "NaN is not JSON"),
    (b"[-Infinity]", "Infinity is not JSON"),
    (b"[1e999]", "beyond a double"),
    (b"1" * 5000, "limit"),
    (b'"\xff"', "utf-8"),
])
def test_json_bodies_that_are_not_rfc_8259_json_are_400s(body, reason):
    with pytest.raises(http.Problem) as caught:
        semantics.json_body("application/json", body)
    assert caught.value.status == 400 and reason.lower() in caught.value.detail.lower()


def test_json_nested_to_the_limit_is_fine():
    document = semantics.json_body("application/json", b"[" * 64 + b"]" * 64)
    depth = 0
    while isinstance(document, list) and document:
        document, depth = document[0], depth + 1
    assert depth == 63


@given(st.binary(max_size=2000) | st.text(max_size=300).map(str.encode) | json_like())
@settings(max_examples=300, deadline=None)
def test_any_body_is_a_document_or_a_4xx_problem(body):
    try:
        semantics.json_body("application/json", body)
    except http.Problem as problem:
        assert 400 <= problem.status < 500


@given(st.text(max_size=30))
@settings(max_examples=300, deadline=None)
def test_decimal_takes_only_ascii_decimals(raw):
    try:
        value = http.decimal(raw, "n")
    except http.Problem as problem:
        assert problem.status == 400
    else:
        assert math.isfinite(value) and value >= 0 and raw.isascii() and raw.replace(".", "", 1).isdigit()


def test_documents_expire_and_a_full_collection_takes_no_new_key(store_at):
    from services.common.documents import Documents

    def put(documents: Documents, key: str) -> int:
        return db.run(documents.handle("PUT", "bins", key, f"/bins/{key}", {"Content-Type": "application/json"},
                                       b'{"a": 1}', lambda d: d)).status

    expiring = Documents(db.open_database("httpbin", store_at("httpbin")), ttl_s=-1)  # every one is past its time
    assert put(expiring, "first") == 201 and put(expiring, "second") == 201
    assert [d["key"] for d in db.run(expiring.list("bins"))] == ["second"]
    # another collection of the same kind (web's carts share the table's shape)
    bounded = Documents(db.open_database("web", store_at("web")), max_per_collection=2)
    assert put(bounded, "a") == 201 and put(bounded, "b") == 201 and put(bounded, "a") == 200  # replacing is fine
    with pytest.raises(http.Problem) as full:
        put(bounded, "c")
    assert full.value.status == 507


def test_expired_idempotency_keys_of_every_scope_are_purged(store_at, monkeypatch):
    from services.common import idempotency

    keys = IdempotencyKeys(db.open_database("web", store_at("web")), ttl=3600)
    db.run(keys.claim("someone", "old-key", "print"))
    _rows(keys.database, "UPDATE idempotency_keys SET created = created - 7200")  # two hours ago
    monkeypatch.setattr(idempotency, "PURGE_EVERY_S", 0)
    db.run(keys.claim("someone-else", "new-key", "print"))
    assert [row["scope"] for row in _rows(keys.database, "SELECT scope FROM idempotency_keys")] == ["someone-else"]


def test_a_claim_whose_process_died_is_taken_over_by_the_retry_at_once(store_at, tmp_path):
    """A SIGKILLed request leaves its key in flight; the retry must not wait `stale_after` (an hour here) for it,
    while a claim whose process lives is still a 409. (SQLite: flocks beside the file; Postgres: advisory locks.)"""
    where = store_at("web")
    claimed, release = multiprocessing.get_context("fork").Event(), multiprocessing.get_context("fork").Event()

    def first_attempt() -> None:
        keys = IdempotencyKeys(db.open_database("web", where), stale_after=3600)
        assert db.run(keys.claim("s", "key-1", "print")) is None
        claimed.set()
        release.wait(30)  # "processing" until killed

    child = multiprocessing.get_context("fork").Process(target=first_attempt)
    child.start()
    try:
        assert claimed.wait(30)
        retry = IdempotencyKeys(db.open_database("web", where), stale_after=3600)
        with pytest.raises(Problem) as in_flight:
            db.run(retry.claim("s", "key-1", "print"))
        assert in_flight.value.status == 409  # its owner is alive: still in flight
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        deadline = time.monotonic() + 10  # Postgres notices the closed connection within milliseconds
        while True:
            try:
                assert db.run(retry.claim("s", "key-1", "print")) is None  # the owner is gone: the retry owns it
                break
            except Problem as still:
                assert still.status == 409 and time.monotonic() < deadline
                time.sleep(0.05)
        if not db.is_postgres(where):
            owners = Path(f"{where}.owners")
            assert list(owners.glob("*.lock")) == [owners / f"{db.run(retry.liveness.me())}.lock"]  # and its file
    finally:
        if child.is_alive():
            child.kill()


def test_forwarded_headers_are_trusted_only_from_nginx(monkeypatch):
    from services.common import proxy

    native = proxy.TrustedProxy("127.0.10.1")
    assert native.trusts("127.0.10.1") and native.trusts("::ffff:127.0.10.1")
    assert not native.trusts("127.0.0.1") and not native.trusts(None)  # a local process connecting directly
    assert native.literals() == ["127.0.10.1"]
    assert not proxy.TrustedProxy(None).trusts("127.0.0.1")  # unset: nobody
    by_name = proxy.TrustedProxy("localhost")  # Compose's "nginx": looked up, and again after REFRESH_S
    assert by_name.literals() == [] and by_name.trusts("127.0.0.1")
    monkeypatch.setattr(proxy.socket, "getaddrinfo", lambda *a, **k: [(0, 0, 0, "", ("10.0.0.9", 0))])
    assert by_name.trusts("127.0.0.1")  # cached ...
    by_name._expires = 0
    assert by_name.trusts("10.0.0.9") and not by_name.trusts("127.0.0.1")  # ... then the new address


def test_postgres_queries_park_only_their_own_request_under_asyncio_and_under_gevent():
    """Tornado and aiohttp await async psycopg connections; web's greenlets use psycopg's synchronous pool,
    whose waits gevent's patched select makes cooperative. Either way, two slow queries at once take the time
    of one, and (gevent) the hub keeps running other greenlets meanwhile."""
    import asyncio
    import subprocess
    import sys

    from stack.topology import ROOT
    from tests import postgres_cluster

    url = postgres_cluster.fresh_database()
    try:
        database = db.open_database("catalog", url, asynchronous=True)

        async def slow() -> None:
            async with database.session() as conn:
                await conn.execute("SELECT pg_sleep(0.4)")

        async def both() -> float:
            started = time.monotonic()
            await asyncio.gather(slow(), slow())
            elapsed = time.monotonic() - started
            await database.aclose()
            return elapsed

        assert asyncio.run(both()) < 0.75  # together, not one after the other (0.8 s)

        program = f"""
from gevent import monkey
monkey.patch_all()
import time, gevent
from services.common import db
database = db.open_database("web", {url!r})
def slow():
    async def query():
        async with database.session() as conn:
            await conn.execute("SELECT pg_sleep(0.4)")
    db.run(query())
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(200)])
started = time.monotonic()
gevent.joinall([gevent.spawn(slow), gevent.spawn(slow)], raise_error=True)
elapsed = time.monotonic() - started
ticker.kill()
assert elapsed < 0.75, elapsed  # the two overlapped
assert len(ticks) >= 10, len(ticks)  # and the hub ran another greenlet while they waited
"""
        done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        postgres_cluster.drop(url)


def test_a_first_claim_is_never_swept_as_a_dead_owners_by_another_process_starting_at_once(tmp_path, monkeypatch):
    """Two gunicorn workers' first claims at the same moment: the second sweeps the directory for dead owners'
    files while the first has made its file and not yet locked it. It must not find that file (it would lock and
    remove it, and the first worker's own flock would fail: a 500). Here the sweep runs at exactly that moment."""
    from services.common import idempotency

    owners = tmp_path / "owners"
    first, second = idempotency.Liveness(owners), idempotency.Liveness(owners)
    real_flock = fcntl.flock
    swept: list[str] = []

    def flock_after_a_sweep(file, operation):  # the other process's first claim, just before our flock
        if not swept and getattr(file, "name", "").startswith(str(owners)):
            swept.extend(path.name for path in owners.iterdir())
            for leftover in owners.glob("*.lock"):
                second.gone_now(leftover.stem)
        return real_flock(file, operation)

    monkeypatch.setattr(idempotency.fcntl, "flock", flock_after_a_sweep)
    token = db.run(first.me())
    monkeypatch.setattr(idempotency.fcntl, "flock", real_flock)
    assert swept  # the sweep did run inside the window
    assert (owners / f"{token}.lock").exists() and not second.gone_now(token)  # alive, and held
