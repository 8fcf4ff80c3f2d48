"""Authentication and roles (issue 15, item 1): tokens stored hashed, one rule per route, 401 / 403
at every role boundary (generated from the app's route table), the web page's session cookie,
revocation, the CLI's users / login commands, first-start admin, no unauthenticated remote bind."""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest
from helpers.http import bearer, http
from helpers.routes import walk_routes

from rayrt.domain.errors import InputError
from rayrt.service.auth import PUBLIC_ROUTES, RoleRule, check_bind
from rayrt.service.credentials import save_token, token_for, tokens_path
from rayrt.service.runtime import bootstrap_admin
from rayrt.service.store import Store
from rayrt.service.users import USERS_FILE, Role, UserStore, hash_token

# ---------------------------------------------------------------------------- users (no Ray)


def test_tokens_are_stored_hashed_and_revocation_takes_effect(tmp_path):
    users = UserStore(Store(tmp_path), reload_s=0.0)
    alice, token = users.add("alice", Role.clinician)
    raw = (tmp_path / USERS_FILE).read_text()
    assert token not in raw and hash_token(token) in raw, "only the token's hash is stored"
    assert re.fullmatch(r"rrt_[A-Za-z0-9_-]{43}", token)
    assert users.authenticate(token).name == "alice"
    assert users.authenticate(token + "x") is None and users.authenticate(None) is None
    assert users.authenticate("Bearer " + token) is None
    # a second process (the running service) sees the revocation
    other = UserStore(Store(tmp_path), reload_s=0.0)
    assert other.authenticate(token).role is Role.clinician
    users.revoke("alice")
    assert other.authenticate(token) is None
    # the name can be given again, with a new token; the old one stays dead
    _, token2 = users.add("alice", Role.physicist)
    assert other.authenticate(token2).role is Role.physicist and other.authenticate(token) is None
    assert [(u.name, u.active) for u in users.list()] == [("alice", False), ("alice", True)]


def test_a_damaged_user_table_keeps_the_last_good_one(tmp_path):
    users = UserStore(Store(tmp_path), reload_s=0.0)
    _, token = users.add("alice", Role.clinician)
    assert users.authenticate(token).name == "alice"
    (tmp_path / USERS_FILE).write_text('{"users": [{"name": ')  # torn
    assert users.authenticate(token).name == "alice", "no 500 for everyone: the last good table"
    assert UserStore(Store(tmp_path), reload_s=0.0).authenticate(token) is None, "none at first: nobody"


@pytest.mark.parametrize(
    "name, role, status",
    [("alice", "clinician", 409), ("bad name", "clinician", 422), ("bob", "root", 422), ("", "admin", 422)],
)
def test_bad_users_are_refused(tmp_path, name, role, status):
    users = UserStore(Store(tmp_path))
    users.add("alice", Role.admin)
    before = (tmp_path / USERS_FILE).read_bytes()
    with pytest.raises(InputError) as exc:
        users.add(name, role)
    assert exc.value.status == status
    assert (tmp_path / USERS_FILE).read_bytes() == before
    with pytest.raises(InputError) as exc:
        users.revoke("nobody")
    assert exc.value.status == 404


def test_roles_are_ordered():
    assert Role.admin.allows(Role.physicist) and Role.physicist.allows(Role.clinician)
    assert not Role.clinician.allows(Role.physicist) and not Role.physicist.allows(Role.admin)


def test_first_start_creates_the_admin_and_keeps_its_token_private(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYRT_TOKEN_FILE", str(tmp_path / "client" / "tokens.json"))
    monkeypatch.delenv("RAYRT_TOKEN", raising=False)
    store = Store(tmp_path / "data")
    said = bootstrap_admin(store, "http://127.0.0.1:8123")
    assert said is not None and str(tokens_path()) in said
    token = token_for("http://127.0.0.1:8123/")
    assert UserStore(store).authenticate(token).role is Role.admin
    assert tokens_path().stat().st_mode & 0o777 == 0o600
    assert bootstrap_admin(store, "http://127.0.0.1:8123") is None, "only on the first start"
    monkeypatch.setenv("RAYRT_TOKEN", "rrt_from_env")
    assert token_for("http://127.0.0.1:8123") == "rrt_from_env"


def test_a_token_file_others_can_read_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYRT_TOKEN_FILE", str(tmp_path / "tokens.json"))
    monkeypatch.delenv("RAYRT_TOKEN", raising=False)
    save_token("http://h:1", "rrt_x")
    os.chmod(tmp_path / "tokens.json", 0o644)
    with pytest.raises(InputError, match="chmod 600"):
        token_for("http://h:1")


def test_no_remote_bind_without_authentication():
    check_bind("127.0.0.1", False)
    check_bind("0.0.0.0", True)
    with pytest.raises(InputError, match="authentication off"):
        check_bind("0.0.0.0", False)
    from rayrt.service import runtime
    from rayrt.service.settings import ServiceSettings

    with pytest.raises(InputError, match="authentication off"):  # refused before anything starts
        runtime.start(ServiceSettings(host="10.1.2.3", port=0, auth=False, data_dir="/nonexistent/never-made"))
    assert not os.path.exists("/nonexistent/never-made")


# ---------------------------------------------------------------------------- the route table

PARAMS = {
    "patient_id": "0123456789ab",
    "job_id": "0123456789ab",
    "name": "nosuch",
    "machine": "nosuch",
    "kind": "rtplan",
    "path": "x.json",
    "plane": "axial",
    "index": "0",
    "n": "0",
}


def route_rules() -> list[tuple[str, str, Role | None]]:
    """(method, path, role needed) of every route of the app; None for the public ones."""
    from rayrt.service.app import api

    out = []
    for r in walk_routes(api.routes):
        dependant = getattr(r, "dependant", None)
        rules = [d.call for d in (dependant.dependencies if dependant else []) if isinstance(d.call, RoleRule)]
        for method in sorted(r.methods - {"HEAD", "OPTIONS"}):
            public = (method, r.path) in PUBLIC_ROUTES
            assert public != bool(rules), f"{method} {r.path}: every route is public or declares one role rule"
            assert len(rules) <= 1, f"{method} {r.path} declares {len(rules)} rules"
            out.append((method, r.path, rules[0].role if rules else None))
    return out


def test_every_route_is_public_or_has_one_rule():
    rules = route_rules()
    declared = {(m, p) for m, p, _ in rules}
    assert {("GET", "/health"), ("POST", "/jobs"), ("POST", "/machines/{name}/status")} <= declared
    assert ("GET", "/docs") in declared and ("GET", "/docs") not in PUBLIC_ROUTES, "the API page needs a user too"
    by = {(m, p): role for m, p, role in rules}
    assert by[("POST", "/patients")] is Role.clinician
    assert by[("POST", "/machines/{name}/status")] is Role.physicist
    assert by[("POST", "/jobs/{job_id}/book")] is Role.physicist
    assert by[("GET", "/cluster")] is Role.admin and by[("POST", "/users")] is Role.admin


def _url(base: str, path: str) -> str:
    return base + re.sub(r"\{(\w+)(:path)?\}", lambda m: PARAMS[m.group(1)], path)


@pytest.fixture(scope="module")
def role_tokens(serve_app) -> dict[Role, str]:
    """One user per role, added by the session's admin through POST /users."""
    out = {}
    for role in Role:
        r = http.post(f"{serve_app}/users", json={"name": f"t-{role.value}", "role": role.value})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["role"] == role.value and body["token"].startswith("rrt_") and "token_sha256" not in body
        out[role] = body["token"]
    return out


@pytest.mark.ray
def test_every_route_answers_401_without_a_token_and_403_below_its_role(serve_app, role_tokens):
    checked = 0
    for method, path, role in route_rules():
        url = _url(serve_app, path)
        body = {"json": {}} if method in ("POST", "DELETE") and path != "/session" else {}
        if role is None:
            continue
        r = httpx.request(method, url, timeout=30, **body)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer") and r.json()["error"] == "unauthorized"
        bad = httpx.request(method, url, headers=bearer("rrt_" + "A" * 43), timeout=30, **body)
        assert bad.status_code == 401, (method, path, "unknown token")
        for other in Role:
            r = httpx.request(method, url, headers=bearer(role_tokens[other]), timeout=30, **body)
            if other.allows(role):
                assert r.status_code not in (401, 403), (method, path, other, r.status_code, r.text)
            else:
                assert r.status_code == 403, (method, path, other, r.status_code, r.text)
                assert r.json()["error"] == "forbidden" and role.value in r.json()["message"]
        checked += 1
    assert checked >= 25


@pytest.mark.ray
def test_public_routes_say_nothing_about_patients(serve_app):
    r = httpx.get(f"{serve_app}/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert httpx.get(f"{serve_app}/ui", timeout=30).status_code == 200
    r = httpx.get(f"{serve_app}/no/such/route", timeout=30)
    assert r.status_code == 401, "an anonymous caller learns nothing of the route map"
    assert http.get(f"{serve_app}/no/such/route").status_code == 404
    for path in ("/docs", "/openapi.json", "/redoc"):  # the API description too needs a user
        assert httpx.get(f"{serve_app}{path}", timeout=30).status_code == 401, path
    spec = http.get(f"{serve_app}/openapi.json").json()
    assert "/jobs" in spec["paths"] and "/openapi.json" not in spec["paths"]
    assert "swagger" in http.get(f"{serve_app}/docs").text.lower()


@pytest.mark.ray
def test_a_revoked_token_is_refused_at_once(serve_app):
    r = http.post(f"{serve_app}/users", json={"name": "short-lived", "role": "clinician"})
    token = r.json()["token"]
    me = httpx.get(f"{serve_app}/me", headers=bearer(token), timeout=30)
    assert me.status_code == 200 and me.json()["name"] == "short-lived" and me.json()["role"] == "clinician"
    assert http.post(f"{serve_app}/users/short-lived/revoke").json()["revoked_at"]
    listed = {u["name"]: u for u in http.get(f"{serve_app}/users").json()["users"]}
    assert listed["short-lived"]["revoked_at"] and all("token" not in json.dumps(u) for u in listed.values())
    # the replica that revoked it writes the table and refuses it at once; every replica re-reads within RELOAD_S
    assert httpx.get(f"{serve_app}/me", headers=bearer(token), timeout=30).status_code == 401
    r = http.post(f"{serve_app}/users", json={"name": "short-lived", "role": "root"})
    assert r.status_code == 422 and r.json()["field"] == "role"


@pytest.mark.ray
def test_the_web_page_signs_in_with_an_http_only_session_cookie(serve_app, role_tokens):
    with httpx.Client(base_url=serve_app, timeout=30) as browser:
        assert browser.get("/jobs").status_code == 401
        bad = browser.post("/session", json={"token": "rrt_nope"})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers
        r = browser.post("/session", json={"token": role_tokens[Role.clinician]})
        assert r.status_code == 200 and r.json()["name"] == "t-clinician"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert browser.get("/jobs").status_code == 200, "the cookie signs later requests in"
        assert browser.get("/cluster").status_code == 403, "with the user's role"
        # another site's page can neither sign in nor act with the cookie
        evil = {"Origin": "https://evil.example"}
        assert browser.post("/session", json={"token": role_tokens[Role.admin]}, headers=evil).status_code == 403
        assert browser.post("/jobs/0123456789ab/cancel", headers=evil).status_code == 403
        assert browser.delete("/session").status_code == 204
        assert browser.get("/jobs").status_code == 401, "signed out"


# ---------------------------------------------------------------------------- the CLI


def test_users_cli_adds_lists_and_revokes(tmp_path, capsys):
    from rayrt.cli.app import run

    data = str(tmp_path / "data")
    assert run(["users", "add", "carol", "--role", "physicist", "--data", data]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("rrt_") and "shown once" in out.err
    assert UserStore(Store(data)).authenticate(token).name == "carol"
    assert run(["users", "list", "--data", data]) == 0
    listing = capsys.readouterr().out
    assert "carol" in listing and "physicist" in listing and token not in listing and hash_token(token) not in listing
    assert run(["users", "add", "carol", "--role", "admin", "--data", data]) == 2
    assert "exists" in capsys.readouterr().err
    assert run(["users", "add", "dave", "--role", "root", "--data", data]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown role") and err.count("\n") == 1
    assert run(["users", "revoke", "carol", "--data", data]) == 0
    assert UserStore(Store(data)).authenticate(token) is None


@pytest.mark.ray
def test_cli_login_keeps_the_token_and_commands_send_it(serve_app, role_tokens, tmp_path, monkeypatch, capsys):
    import io

    from rayrt.cli.app import run

    monkeypatch.setenv("RAYRT_TOKEN_FILE", str(tmp_path / "tokens.json"))
    monkeypatch.delenv("RAYRT_TOKEN", raising=False)
    assert run(["machines", "--server", serve_app]) == 2
    err = capsys.readouterr().err
    assert "sign in" in err and err.count("\n") == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("rrt_wrong\n"))
    assert run(["login", "--server", serve_app, "--token-stdin"]) == 2
    assert not (tmp_path / "tokens.json").exists(), "a refused token is not kept"
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(role_tokens[Role.clinician] + "\n"))
    assert run(["login", "--server", serve_app, "--token-stdin"]) == 0
    assert "t-clinician (clinician)" in capsys.readouterr().out
    assert (tmp_path / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert run(["machines", "--server", serve_app, "--json"]) == 0
    capsys.readouterr()
    assert run(["machines", "--server", serve_app, "--set", "nosuch=down:malfunction"]) == 2
    assert "physicist" in capsys.readouterr().err, "a clinician may not change a machine's status"


# ---------------------------------------------------------------------------- `rayrt serve` over HTTPS


def _self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1 (cryptography, one of Ray's own dependencies)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    crt, pem = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pem.chmod(0o600)
    return crt, pem


def test_rayrt_serve_first_start_over_https(tmp_path, monkeypatch):
    """`rayrt serve` with tls_certfile / tls_keyfile answers HTTPS only; its first start creates the
    admin user, says where the token is, and the CLI signs in with it."""
    from helpers.faults import ServiceProcess

    from rayrt.cli.app import run
    from rayrt.service.process import free_port

    crt, key = _self_signed(tmp_path)
    tokens = tmp_path / "client" / "tokens.json"
    monkeypatch.setenv("RAYRT_TOKEN_FILE", str(tokens))
    monkeypatch.delenv("RAYRT_TOKEN", raising=False)
    cfg = tmp_path / "service.yaml"
    cfg.write_text(
        "num_cpus: 1\nobject_store_memory_mb: 128\ncontrolled_computers: 1\ncontrolled_computer_cpus: 0\n"
        f"tls_certfile: {crt}\ntls_keyfile: {key}\n"
    )
    svc = ServiceProcess(tmp_path / "data", free_port(), cfg, tmp_path / "serve.log", tls_ca=crt)
    try:
        svc.start()
        svc.wait_healthy()
        said = svc.log_path.read_text(errors="replace")
        assert "created the admin user" in said and str(tokens) in said
        token = token_for(svc.url)
        assert token and tokens.stat().st_mode & 0o777 == 0o600
        me = httpx.get(f"{svc.url}/me", headers=bearer(token), verify=svc.verify, timeout=30)
        assert me.status_code == 200 and me.json()["role"] == "admin"
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{svc.port}/health", timeout=10)
        monkeypatch.setenv("SSL_CERT_FILE", str(crt))  # the CLI trusts the clinic's CA through the environment
        assert run(["machines", "--server", svc.url, "--json"]) == 0
    finally:
        svc.cleanup()


def test_tls_files_go_together():
    from rayrt.service.settings import load_settings

    with pytest.raises(InputError, match="tls_certfile and tls_keyfile go together"):
        load_settings(tls_certfile="/etc/rayrt/tls.crt")
