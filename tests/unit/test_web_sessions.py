"""web's accounts and server-side sessions, in-process (Flask's test client keeps cookies like a browser)."""

import pytest

from services.web.app import create_app
from services.web.store import Store

CREDENTIALS = {"email": "ada@example.com", "password": "correct horse"}


@pytest.fixture
def app(tmp_path):
    return create_app({"TESTING": True, "DATABASE": tmp_path / "web.sqlite3"})


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
    Store(app.config["DATABASE"]).expire_session(token)
    assert client.get("/web/me").status_code == 401


def test_sessions_are_shared_by_every_worker(app, tmp_path):
    """A second app on the same database (another gunicorn worker) sees the session."""
    client = app.test_client()
    login(client)
    other_worker = create_app({"TESTING": True, "DATABASE": app.config["DATABASE"]}).test_client()
    other_worker.set_cookie("sid", client.get_cookie("sid", path="/web").value, path="/web")
    assert other_worker.get("/web/me").json["email"] == CREDENTIALS["email"]


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
    owner = Store(app.config["DATABASE"]).signup("grace@example.com", "another password")
    order = Store(app.config["DATABASE"]).create_order(
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
