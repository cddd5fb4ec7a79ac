"""Accounts and sessions: signup, login (a server-side session, a random id in the cookie), logout, me; and the
rules every unsafe request and every logged-in view share (refuse_cross_site, login_required)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from flask import Response, request

from services.common import http, proxy
from services.web.views import PREFIX, as_json, body, settings, store

COOKIE = "sid"
WWW_AUTHENTICATE = f'Cookie realm="web", form-action="{PREFIX}/login", cookie-name="{COOKIE}"'


def _credentials() -> tuple[str, str]:
    document = body()
    if not isinstance(document, dict) or set(document) != {"email", "password"}:
        raise http.Problem(422, "Invalid credentials document", 'send {"email": ..., "password": ...}')
    email, password = document["email"], document["password"]
    if not isinstance(email, str) or "@" not in email or not 3 <= len(email) <= 254:
        raise http.Problem(422, "Invalid email", "email must look like name@domain")
    if not isinstance(password, str) or not 8 <= len(password) <= 128:
        raise http.Problem(422, "Invalid password", "password must be 8 to 128 characters")
    return email.strip(), password


def client_scheme() -> str:
    """How the client reached the stack: nginx's X-Forwarded-Proto ("https" on its TLS port), believed only on a
    connection from nginx; otherwise this connection's own scheme."""
    if proxy.nginx.trusts(request.remote_addr):
        return "https" if request.headers.get("X-Forwarded-Proto", "http").lower() == "https" else "http"
    return request.scheme


def _cookie_secure() -> bool:
    """Secure (RFC 6265 §4.1.2.5: sent back over TLS only) whenever the client came over TLS, or always when the
    settings say TLS ends in front of nginx (WebSettings.cookie_secure)."""
    return settings().cookie_secure or client_scheme() == "https"


def refuse_cross_site(headers: Mapping[str, str]) -> None:
    """A browser's unsafe request (POST, PUT, PATCH, DELETE) from another site is refused, cookie or not: it
    would act with the user's session (CSRF), or log them into someone else's account. Browsers say where a
    request comes from (Sec-Fetch-Site, Origin); clients that send neither (curl, scripts) are not browsers
    carrying a victim's cookie, and pass. SameSite=Lax on the session cookie is the first line; this the second."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise http.Problem(403, "Cross-site request refused", f"Sec-Fetch-Site: {site[:40]}")
    origin = headers.get("Origin")
    if origin is not None:
        behind_nginx = proxy.nginx.trusts(request.remote_addr)
        host = (headers.get("X-Forwarded-Host") if behind_nginx else None) or headers.get("Host")
        own = f"{client_scheme()}://{host}"
        if origin.lower() != own.lower():
            raise http.Problem(403, "Cross-site request refused", f"Origin {origin[:80]} is not {own[:80]}")


def _unauthorized(detail: str) -> http.Problem:
    return http.Problem(401, "Unauthorized", detail)


def current_user() -> dict:
    user = store().session_user(request.cookies.get(COOKIE))
    if user is None:
        raise _unauthorized("log in first: POST /web/login sets the session cookie" if COOKIE not in request.cookies
                            else "the session expired or was closed; log in again")
    return user


def login_required(view: Callable[..., Response]) -> Callable[..., Response]:
    """The view runs with the session's user as its first argument; without a live session the client gets 401
    with WWW-Authenticate saying how to log in."""

    @functools.wraps(view)
    def with_user(*args: object, **kwargs: object) -> Response:
        return view(current_user(), *args, **kwargs)

    return with_user


def signup() -> Response:
    user = store().signup(*_credentials())
    response = as_json(user, 201)
    response.headers["Location"] = f"{PREFIX}/me"
    return response


def login() -> Response:
    email, password = _credentials()
    user = store().authenticate(email, password)
    if user is None:
        raise _unauthorized("wrong email or password")
    token = store().open_session(user["id"], replacing=request.cookies.get(COOKIE))
    response = as_json(user)
    # The cookie carries only a random id; the session itself is a server-side row.
    response.set_cookie(COOKIE, token, max_age=int(settings().session_ttl_s), path=PREFIX, httponly=True,
                        samesite="Lax", secure=_cookie_secure())
    return response


def logout() -> Response:
    store().close_session(request.cookies.get(COOKIE))
    response = Response(status=204)
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="Lax", secure=_cookie_secure())
    return response


@login_required
def me(user: dict) -> Response:
    return as_json(user)


# (path under PREFIX, endpoint name, view, methods)
ROUTES: list[tuple[str, str, Callable[..., Response], list[str]]] = [
    ("/signup", "signup", signup, ["POST"]),
    ("/login", "login", login, ["POST"]),
    ("/logout", "logout", logout, ["POST"]),
    ("/me", "me", me, ["GET"]),
]
