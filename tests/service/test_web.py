"""The web view (rayrt/web/static, rayrt.service.web): served files, API paths used by the page,
path traversal. Fast: no Ray is started; the router is mounted on a plain FastAPI app."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers.paths import REPO
from helpers.routes import walk_routes

from rayrt.service.web import CONTENT_TYPES, STATIC_DIR, router, static_files

JS = STATIC_DIR / "rayrt.js"


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


class _Refs(HTMLParser):
    """src / href attributes of script, link and img tags."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            if v and ((tag == "script" and k == "src") or (tag in ("link", "img") and k in ("href", "src"))):
                self.refs.append((tag, v))


# ------------------------------------------------------------------------ parsing the page's script
_API_ENTRY = re.compile(r"""\b(\w+)\s*:\s*\[\s*["'](GET|POST|PUT|DELETE|PATCH)["']\s*,\s*["'](/[^"']*)["']\s*\]""")
_PATH_LITERAL = re.compile(r"""(["'`])(/[A-Za-z][^"'`\s]*)\1""")
_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")


def api_table(js: str) -> dict[str, tuple[str, str]]:
    """The page's API table: name -> (method, path template)."""
    return {name: (method, path) for name, method, path in _API_ENTRY.findall(js)}


def path_literals(js: str) -> set[str]:
    """Every quoted string in the script that looks like a server path ('/x...')."""
    return {m.group(2) for m in _PATH_LITERAL.finditer(js)}


def _template_regex(template: str) -> re.Pattern:
    """A route or page template -> regex over concrete paths ('{x:path}' may hold slashes)."""
    out, pos = [], 0
    for m in _PARAM.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(".+" if m.group(2) == "path" else "[^/]+")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


def _sample(template: str, slashes: bool) -> str:
    """A concrete path for a template: each parameter -> 'x1' (or 'a/b' in a 'path' parameter)."""
    return _PARAM.sub(lambda m: "a/b" if slashes and m.group(1) == "path" else "x1", template)


def route_table(app: FastAPI) -> list[tuple[frozenset[str], str]]:
    """(methods, path template) of every HTTP route of ``app``."""
    out = []
    for r in walk_routes(app.routes):
        path, methods = getattr(r, "path", None), getattr(r, "methods", None)
        if path and methods:
            out.append((frozenset(methods), path))
    return out


def unmatched(calls: dict[str, tuple[str, str]], routes: list[tuple[frozenset[str], str]]) -> list[str]:
    """The page's API entries that no route answers (method and path)."""
    bad = []
    for name, (method, template) in calls.items():
        ok = False
        for slashes in (False, True):
            concrete = _sample(template, slashes)
            if any(method in methods and _template_regex(path).match(concrete) for methods, path in routes):
                ok = True
                break
        if not ok:
            bad.append(f"{name}: {method} {template}")
    return bad


@pytest.fixture(scope="module")
def service_routes() -> list[tuple[frozenset[str], str]]:
    from rayrt.service.app import api  # imports ray.serve, starts nothing

    return route_table(api)


# ------------------------------------------------------------------------ tests
def test_ui_page_references_existing_assets(client: TestClient) -> None:
    r = client.get("/ui")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "__RAYRT_ROOT__" not in r.text
    parser = _Refs()
    parser.feed(r.text)
    tags = {t for t, _ in parser.refs}
    assert {"script", "link"} <= tags, parser.refs
    for tag, ref in parser.refs:
        assert ref.startswith("/ui/static/"), f"{tag} {ref}: assets are served from this service only (no CDN)"
        a = client.get(ref)
        assert a.status_code == 200, ref
        ext = Path(ref).suffix
        assert a.headers["content-type"] == CONTENT_TYPES[ext], ref
        assert a.headers["x-content-type-options"] == "nosniff"
    refs = {ref for _, ref in parser.refs}
    assert "/ui/static/rayrt.js" in refs and "/ui/static/rayrt.css" in refs


def test_root_redirects_to_ui(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code in (307, 308) and r.headers["location"] == "/ui"
    assert client.get("/ui/").status_code == 200


def test_mount_point_is_passed_to_the_page() -> None:
    app = FastAPI(root_path="/rayrt")
    app.include_router(router)
    r = TestClient(app).get("/ui")
    assert r.status_code == 200
    assert 'data-root="/rayrt"' in r.text and 'src="/rayrt/ui/static/rayrt.js"' in r.text


def test_no_external_resources_in_static_files() -> None:
    for name, path in static_files().items():
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), (
                f"{name} loads something from outside"
            )
            assert not re.search(r"@import\s+url\(\s*[\"']?https?:", text), name
            assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", ""), name


def test_script_never_parses_data_as_html() -> None:
    js = JS.read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, f"rayrt.js uses {sink}: render data with textContent"


def test_viewer_script_never_parses_data_as_html_nor_names_a_server_path() -> None:
    """viewer.js (the image viewer) renders names as text and takes every URL from rayrt.js's API table."""
    js = (STATIC_DIR / "viewer.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, f"viewer.js uses {sink}: render data with textContent"
    assert path_literals(js) == set()
    assert "window.RayrtViewer" in js and "RayrtViewer.open" in JS.read_text(encoding="utf-8")
    refs = _Refs()
    refs.feed((STATIC_DIR / "index.html").read_text(encoding="utf-8"))
    scripts = [ref for tag, ref in refs.refs if tag == "script"]
    assert scripts.index("__RAYRT_ROOT__/ui/static/viewer.js") < scripts.index("__RAYRT_ROOT__/ui/static/rayrt.js")


def test_every_api_path_the_script_calls_is_a_service_route(service_routes) -> None:
    js = JS.read_text(encoding="utf-8")
    table = api_table(js)
    assert len(table) >= 12, table  # the page uses jobs, events, plans, results, machines, queue, cluster ...
    for needed in (
        "/jobs",
        "/jobs/{job_id}/events",
        "/jobs/{job_id}/plans",
        "/machines/{name}/status",
        "/queue",
        "/cluster",
    ):
        assert needed in {p for _, p in table.values()}, needed
    assert unmatched(table, service_routes) == []
    # no request bypasses the table: every quoted server path in the script is a table entry
    stray = path_literals(js) - {p for _, p in table.values()}
    assert stray == set(), f"paths outside the API table: {stray}"
    # every entry is used
    for name in table:
        assert len(re.findall(r"""["']%s["']""" % re.escape(name), js)) >= 1, f"API entry {name} is never called"


def test_route_check_catches_a_wrong_path(service_routes) -> None:
    wrong = {
        "typo": ("GET", "/job/{job_id}"),
        "method": ("GET", "/machines/{name}/status"),
        "extra": ("GET", "/jobs/{job_id}/plans/{machine}/{kind}/more"),
    }
    assert sorted(unmatched(wrong, service_routes)) == sorted(f"{k}: {m} {p}" for k, (m, p) in wrong.items())
    right = {"file": ("GET", "/jobs/{job_id}/results/{path}"), "status": ("POST", "/machines/{name}/status")}
    assert unmatched(right, service_routes) == []
    assert api_table('x = { a: ["GET", "/jobs/{job_id}"], b: ["POST", "/jobs/{job_id}/cancel"] };') == {
        "a": ("GET", "/jobs/{job_id}"),
        "b": ("POST", "/jobs/{job_id}/cancel"),
    }


def test_web_router_is_part_of_the_service(service_routes) -> None:
    paths = {p for _, p in service_routes}
    assert {"/ui", "/", "/ui/static/{name:path}"} <= paths
    clash = [p for p in ("/ui", "/ui/static/{name:path}") if sum(1 for _, q in service_routes if q == p) != 1]
    assert clash == []


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/../../service/web.py",
        "/ui/static/%2e%2e/%2e%2e/service/web.py",
        "/ui/static/..%2f..%2fservice%2fweb.py",
        "/ui/static/%2e%2e%2f%2e%2e%2f__init__.py",
        "/ui/static//etc/passwd",
        "/ui/static/%2fetc%2fpasswd",
        "/ui/static/rayrt.js/../../../__init__.py",
        "/ui/static/..\\..\\__init__.py",
        "/ui/static/missing.js",
        "/ui/static/",
    ],
)
def test_static_path_traversal_is_refused(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert b"import" not in r.content and b"root:" not in r.content


def test_static_table_lists_only_files_inside_the_folder(tmp_path, monkeypatch) -> None:
    import rayrt.service.web as web

    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "a.js").write_text("1")
    (tmp_path / "static" / "notes.py").write_text("secret")  # unknown type: not served
    (tmp_path / "outside.css").write_text("x")
    try:
        (tmp_path / "static" / "link.css").symlink_to(tmp_path / "outside.css")
    except OSError:
        pass
    monkeypatch.setattr(web, "STATIC_DIR", tmp_path / "static")
    web.static_files.cache_clear()
    try:
        assert set(web.static_files()) == {"a.js"}
    finally:
        monkeypatch.undo()
        web.static_files.cache_clear()
    assert "rayrt.js" in web.static_files()


def test_static_files_ship_with_the_package() -> None:
    """pyproject's package-data must cover every served file (wheel and sdist)."""
    import tomllib

    root = REPO
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = data["tool"]["setuptools"]["package-data"]["rayrt"]
    pkg = root / "rayrt"
    covered = {p.resolve() for pat in patterns for p in pkg.glob(pat) if p.is_file()}
    missing = [n for n, p in static_files().items() if p not in covered]
    assert missing == [], f"not in package-data: {missing}"
