"""web's accounts and server-side sessions, in-process (Flask's test client keeps cookies like a browser)."""

import pytest

from services.web.app import create_app
from services.web.store import Store

CREDENTIALS = {"email": "ada@example.com", "password": "correct horse"}


@pytest.fixture
def app(store_at):
    app = create_app({"TESTING": True, "DATABASE": store_at("web")})
    yield app
    app.extensions["store"].database.close()  # a Postgres pool left to the garbage collector warns


@pytest.fixture
def own_store(store_at):
    """web's store on its own (no app), closed after the test."""
    store = Store(store_at("web"))
    yield store
    store.database.close()


@pytest.fixture
def client(app):
    return app.test_client()


def login(client, credentials=CREDENTIALS):
    client.post("/web/signup", json=credentials)
    return client.post("/web/login", json=credentials)


def test_signup_is_201_with_location_and_no_password_echoed(client):
    response = client.post("/web/signup", json=CREDENTIALS)
    assert response.status_code == 201 and response.headers["Location"] == "/web/me"
    assert response.json["email"] == CREDENTIALS["email"] and "password" not in response.get_data(as_text=True)
    again = client.post("/web/signup", json=CREDENTIALS)
    assert again.status_code == 409 and again.content_type == "application/problem+json"


def test_login_sets_a_random_id_cookie_with_safe_attributes(client):
    response = login(client)
    assert response.status_code == 200
    cookie = response.headers["Set-Cookie"]
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    assert name_value.startswith("sid=") and len(name_value) > 40
    assert {"HttpOnly", "SameSite=Lax", "Path=/web"} <= set(attributes)
    assert "ada" not in name_value  # only an opaque id: the session lives server-side
    assert client.get("/web/me").json["email"] == CREDENTIALS["email"]


def test_wrong_password_is_401_with_www_authenticate(client):
    client.post("/web/signup", json=CREDENTIALS)
    response = client.post("/web/login", json={**CREDENTIALS, "password": "wrong password"})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Cookie ")


def test_me_and_orders_need_a_session(client):
    for method, path in (("GET", "/web/me"), ("GET", "/web/orders"), ("POST", "/web/orders")):
        response = client.open(path, method=method, json={"lines": []})
        assert response.status_code == 401, path
        assert "WWW-Authenticate" in response.headers


def test_login_rotates_the_session_id(client):
    first = login(client).headers["Set-Cookie"].split(";")[0]
    second = client.post("/web/login", json=CREDENTIALS).headers["Set-Cookie"].split(";")[0]
    assert first != second
    stale = first.split("=", 1)[1]
    client.set_cookie("sid", stale, path="/web")
    assert client.get("/web/me").status_code == 401  # the old id died at the new login


def test_logout_deletes_the_session(client):
    login(client)
    token = client.get_cookie("sid", path="/web").value
    response = client.post("/web/logout")
    assert response.status_code == 204 and "sid=;" in response.headers["Set-Cookie"]
    client.set_cookie("sid", token, path="/web")  # replaying the old cookie does not bring it back
    assert client.get("/web/me").status_code == 401


def test_expired_sessions_are_refused(app, client):
    login(client)
    token = client.get_cookie("sid", path="/web").value
    app.extensions["store"].expire_session(token)
    assert client.get("/web/me").status_code == 401


def test_sessions_are_shared_by_every_worker(app, tmp_path):
    """A second app on the same database (another gunicorn worker) sees the session."""
    client = app.test_client()
    login(client)
    other_app = create_app({"TESTING": True, "DATABASE": app.config["DATABASE"]})
    try:
        other_worker = other_app.test_client()
        other_worker.set_cookie("sid", client.get_cookie("sid", path="/web").value, path="/web")
        assert other_worker.get("/web/me").json["email"] == CREDENTIALS["email"]
    finally:
        other_app.extensions["store"].database.close()


@pytest.mark.parametrize(
    ("payload", "status"),
    [({"email": "x"}, 422), ({"email": "a@b.c", "password": "short"}, 422), ("nope", 422)],
)
def test_bad_credentials_documents_are_422(client, payload, status):
    assert client.post("/web/signup", json=payload).status_code == status


def test_wrong_media_type_and_bad_json(client):
    assert client.post("/web/signup", data="{}", content_type="text/plain").status_code == 415
    assert client.post("/web/signup", data="{nope", content_type="application/json").status_code == 400
    assert client.post("/web/signup", data="x" * 70_000, content_type="application/json").status_code == 413


def test_order_lines_are_validated_before_any_call_to_catalog(client):
    login(client)
    for lines in ([], [{"item_id": 1}], [{"item_id": 1, "quantity": 0}], [{"item_id": 1, "quantity": 1}] * 2):
        response = client.post("/web/orders", json={"lines": lines})
        assert response.status_code == 422, (lines, response.json)


def test_someone_elses_order_is_403_and_a_missing_one_404(app, client):
    login(client)
    owner = app.extensions["store"].signup("grace@example.com", "another password")
    order = app.extensions["store"].create_order(
        owner["id"], [{"item_id": 1, "name": "Teapot", "unit_price": 1250, "quantity": 1}])
    assert client.get(f"/web/orders/{order['id']}").status_code == 403
    assert client.get("/web/orders/999999").status_code == 404


def test_cart_lines_put_is_idempotent_and_patch_merges(client):
    login(client)
    first = client.put("/web/cart/items/7", json={"quantity": 2})
    again = client.put("/web/cart/items/7", json={"quantity": 2}, headers={"If-Match": first.headers["ETag"]})
    assert first.status_code == 201 and again.status_code == 200 and again.data == first.data
    patched = client.patch("/web/cart/items/7", data='{"quantity": 4}', content_type="application/merge-patch+json")
    assert patched.status_code == 200 and patched.json["document"] == {"quantity": 4}
    assert [line["key"] for line in client.get("/web/cart").json["items"]] == ["7"]
    assert client.put("/web/cart/items/7", json={"quantity": 0}).status_code == 422


def test_threads_get_their_own_connection_and_their_transactions_never_interleave(own_store):
    """gthread workers run requests on several threads of one process: with one shared connection one
    thread's BEGIN met another's statements ("cannot start a transaction within a transaction")."""
    import threading

    store = own_store
    user = store.signup("threads@example.com", "correct horse")
    errors = []

    def place(n: int) -> None:
        for i in range(25):
            try:
                store.create_order(user["id"], [{"item_id": n * 100 + i, "name": "x", "unit_price": 1, "quantity": 1}])
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                errors.append(repr(error))

    threads = [threading.Thread(target=place, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(store.orders_page(user["id"], 100, 0)[0]) == 100  # a page; all 200 are there:

    async def count() -> int:
        async with store.database.session() as conn:
            return (await conn.execute("SELECT COUNT(*) AS n FROM orders")).fetchone()["n"]

    assert store.run(count()) == 8 * 25


def test_under_gevent_scrypt_and_sqlite_run_off_the_hub(tmp_path):
    """A login's scrypt (100-200 ms) on the hub stalled every greenlet of its worker: the store's calls must
    run on another OS thread (gevent's threadpool), and the hub must serve meanwhile."""
    import subprocess
    import sys

    from stack.topology import ROOT

    program = f"""
from gevent import monkey
monkey.patch_all()
import gevent, werkzeug.security as security
from services.web import store as web_store
get_ident = monkey.get_original("_thread", "get_ident")
hub_thread = get_ident()
seen = []
check = web_store.check_password_hash
def recording(*args):
    seen.append(get_ident())
    return check(*args)
web_store.check_password_hash = recording
store = web_store.Store({str(tmp_path / "web.sqlite3")!r})
store.signup("g@example.com", "correct horse")
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.005)) for _ in range(400)])
logins = [gevent.spawn(store.authenticate, "g@example.com", "correct horse") for _ in range(4)]
gevent.joinall(logins)
ticker.kill()
assert all(login.value and login.value["email"] == "g@example.com" for login in logins)
assert seen and hub_thread not in seen, (hub_thread, seen)
print("ticks during logins:", len(ticks))
assert len(ticks) >= 5  # the hub kept running another greenlet while four scrypts ran
"""
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_under_gevent_many_concurrent_writes_never_wait_for_a_pool_thread_their_lock_holder_needs(tmp_path):
    """Writers wait for SQLite's lock in gevent's threadpool. If the lock's holder then needed a pool thread
    too (its COMMIT), and every thread held a waiter, the holder could not finish until SQLite's busy timeout
    (10 s) failed the waiters: web's writes went from thousands per second to none under 64 connections."""
    import subprocess
    import sys

    from stack.topology import ROOT

    program = f"""
from gevent import monkey
monkey.patch_all()
import time, gevent
from services.web.store import Store
store = Store({str(tmp_path / "web.sqlite3")!r})
user = store.signup("w@example.com", "correct horse")
gevent.get_hub().threadpool.maxsize = 2  # fewer threads than writers: every one can be taken by a waiter
started = time.monotonic()
writers = [gevent.spawn(store.open_session, user["id"]) for _ in range(40)]
gevent.joinall(writers, timeout=60)
elapsed = time.monotonic() - started
failed = [w.exception for w in writers if not w.successful()]
assert not failed, failed[:3]
print("40 writes in", round(elapsed, 2), "s")
assert elapsed < 5, elapsed  # each write is about a millisecond; a deadlock lasts the 10 s busy timeout
"""
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_login_costs_one_scrypt_whether_or_not_the_account_exists(own_store, monkeypatch):
    """An unknown account used to cost two key derivations (hash a fresh password, then check it): twice a
    known account's time, which tells an attacker which emails have accounts."""
    from services.web import store as web_store

    store = own_store
    store.signup("known@example.com", "correct horse")
    store.authenticate("nobody@example.com", "warm-up")  # the unknown-account hash is made once, then kept
    calls = []
    for name in ("generate_password_hash", "check_password_hash"):
        original = getattr(web_store, name)
        monkeypatch.setattr(web_store, name, lambda *args, _name=name, _f=original: calls.append(_name) or _f(*args))
    assert store.authenticate("known@example.com", "wrong") is None
    known, calls[:] = list(calls), []
    assert store.authenticate("unknown@example.com", "wrong") is None
    assert calls == known == ["check_password_hash"]


@pytest.mark.parametrize("headers, allowed", [
    ({}, True),  # curl, scripts: no browser, no victim's cookie
    ({"Origin": "http://localhost"}, True),  # the test client's own origin
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "none"}, True),  # typed in the address bar
    ({"Origin": "https://evil.example"}, False),
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Sec-Fetch-Site": "same-site", "Origin": "http://localhost"}, False),  # a sibling subdomain
])
def test_unsafe_requests_from_another_site_are_refused(client, headers, allowed):
    response = client.post("/web/signup", json={"email": "csrf@example.com", "password": "correct horse"},
                           headers=headers)
    if allowed:
        assert response.status_code == 201
    else:
        assert response.status_code == 403 and response.json["title"] == "Cross-site request refused"
        assert response.headers["Content-Type"].startswith("application/problem+json")


def test_safe_requests_from_anywhere_still_work(client):
    assert client.get("/web/json", headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
                      ).status_code == 200


def test_a_page_of_one_users_orders_reads_that_users_orders_only(own_store):
    """The query walks the (user_id, id) index, not every order in the table from the cursor on."""
    store = own_store
    page = "SELECT * FROM orders WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?"

    async def plan() -> str:
        async with store.database.session() as conn:
            if store.database.dialect == "sqlite":
                rows = await conn.execute(f"EXPLAIN QUERY PLAN {page}", (1, 0, 21))
                return " ".join(row["detail"] for row in rows)
            await conn.execute("SET enable_seqscan = off")  # an empty table is cheapest to scan: ask for the index
            rows = await conn.execute(f"EXPLAIN {page.replace('?', '1')}")
            await conn.execute("RESET enable_seqscan")
            return " ".join(row["QUERY PLAN"] for row in rows)

    found = store.run(plan())
    assert "orders_by_user" in found and "Seq Scan" not in found, found


def test_ids_past_the_largest_are_404_not_a_database_error(client):
    """An order or cart id past 2^53-1 (past 64 bits too) is no resource: routing answers 404. Before, SQLite
    raised OverflowError on a 23-digit id (a 500) while Postgres compared it as a numeric."""
    assert login(client).status_code == 200
    for path in ("/web/orders/99999999999999999999999", "/web/orders/9223372036854775808", "/web/orders/0",
                 "/web/cart/items/99999999999999999999999"):
        assert client.get(path).status_code == 404, path
    assert client.put("/web/cart/items/9007199254740992", json={"quantity": 1}).status_code == 404
    assert client.put("/web/cart/items/9007199254740991", json={"quantity": 1}).status_code == 201


def test_text_with_nul_is_a_422_on_either_store(client):
    """U+0000 is valid JSON but no Postgres text can hold it (a 500 there before); SQLite answers the same."""
    response = client.post("/web/signup", data='{"email": "a\\u0000b@example.com", "password": "correct horse"}',
                           content_type="application/json")
    assert response.status_code == 422 and response.json["title"] == "Unstorable value", response.json



@pytest.mark.parametrize("peer, proto, secure", [
    ("127.0.0.9", "https", True),    # nginx's TLS port: the client's connection was encrypted
    ("127.0.0.9", "http", False),    # nginx's plain port
    ("127.0.0.1", "https", False),   # not nginx: anybody can claim https
    ("127.0.0.9", None, False),
])
def test_the_session_cookie_is_secure_when_the_client_came_over_tls_as_nginx_says(client, monkeypatch, peer, proto,
                                                                                     secure):
    from services.common import proxy

    monkeypatch.setattr(proxy, "nginx", proxy.TrustedProxy("127.0.0.9"))
    client.post("/web/signup", json=CREDENTIALS)
    headers = {"X-Forwarded-Proto": proto} if proto else {}
    environ = {"REMOTE_ADDR": peer}
    response = client.post("/web/login", json=CREDENTIALS, headers=headers, environ_base=environ)
    attributes = {part.strip() for part in response.headers["Set-Cookie"].split(";")}
    assert ("Secure" in attributes) is secure
    cleared = client.post("/web/logout", headers=headers, environ_base=environ).headers["Set-Cookie"]
    assert ("Secure" in {part.strip() for part in cleared.split(";")}) is secure
