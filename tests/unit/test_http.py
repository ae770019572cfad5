"""The HTTP server's rules: where it may listen, the token file, the bearer check, JSON errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controller.config.load import load_config
from controller.config.models import Config
from controller.core.errors import ConfigError, NetrootError
from controller.daemon.app import _check_reloadable
from controller.daemon.web.server import build_app, read_token


def _load(tmp_path: Path, http: str) -> Config:
    path = tmp_path / "netroot.toml"
    path.write_text(f"[http]\n{http}\n")
    return load_config(path)


def test_default_is_loopback_and_empty_listen_turns_it_off(tmp_path: Path) -> None:
    assert load_config(None).http.listen == "127.0.0.1:9650"
    assert not _load(tmp_path, 'listen = ""').http.enabled
    for loopback in ("127.0.0.1:1", "[::1]:9650", "localhost:9650", "127.3.4.5:80"):
        assert _load(tmp_path, f'listen = "{loopback}"').http.enabled


@pytest.mark.parametrize("listen", ["0.0.0.0:9650", "10.0.2.2:9650", "[::]:9650"])
def test_other_addresses_need_a_token_file(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f'listen = "{listen}"')
    message = str(err.value)
    assert "http.listen" in message
    assert "http.token_file" in message
    assert "\n" not in message
    config = _load(tmp_path, f'listen = "{listen}"\ntoken_file = "token"')
    assert config.http.token_file == tmp_path / "token"  # relative to the config file


@pytest.mark.parametrize("listen", ["9650", "host:9650", "127.0.0.1:0", "127.0.0.1:70000", ":80"])
def test_a_malformed_listen_is_named(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match=r"http\.listen"):
        _load(tmp_path, f'listen = "{listen}"')


def _with_token(tmp_path: Path, content: str, mode: int) -> Config:
    token = tmp_path / "token"
    token.write_text(content)
    token.chmod(mode)
    return _load(tmp_path, 'listen = "0.0.0.0:9650"\ntoken_file = "token"')


def test_token_file_is_read_when_only_its_owner_and_group_can(tmp_path: Path) -> None:
    assert read_token(_with_token(tmp_path, "s3cret\n", 0o600)) == "s3cret"
    assert read_token(_with_token(tmp_path, "s3cret", 0o640)) == "s3cret"
    assert read_token(_load(tmp_path, "")) is None


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        ("s3cret", 0o644, "mode 0644"),
        ("s3cret", 0o602, "mode 0602"),
        ("\n", 0o600, "expected one token"),
        ("two words", 0o600, "expected one token"),
    ],
)
def test_a_readable_or_empty_token_file_is_refused(
    tmp_path: Path, content: str, mode: int, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        read_token(_with_token(tmp_path, content, mode))
    assert "http.token_file" in str(err.value)
    assert problem in str(err.value)


def test_a_missing_token_file_is_refused(tmp_path: Path) -> None:
    config = _load(tmp_path, 'listen = "0.0.0.0:9650"\ntoken_file = "absent"')
    with pytest.raises(ConfigError, match=r"http\.token_file.*cannot open"):
        read_token(config)


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": request.match_info.get("name", "")})


async def _client(token: str | None) -> TestClient[web.Request, web.Application]:
    app = build_app([("/hello", _hello), ("/hello/{name}", _hello)], token)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_with_a_token_every_request_needs_the_bearer() -> None:
    client = await _client("s3cret")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = await client.get("/hello", headers=headers)
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "error" in await response.json()
        # Unknown paths too: nothing is told before the token is checked.
        assert (await client.get("/nothing")).status == 401
        response = await client.get("/hello/x", headers={"Authorization": "Bearer s3cret"})
        assert response.status == 200
        assert await response.json() == {"hello": "x"}
    finally:
        await client.close()


async def test_read_only_routes_answer_other_methods_and_paths_in_json() -> None:
    client = await _client(None)
    try:
        assert (await client.get("/hello")).status == 200
        missing = await client.get("/nothing")
        assert missing.status == 404
        assert "error" in await missing.json()
        for method in ("POST", "PUT", "DELETE"):
            refused = await client.request(method, "/hello")
            assert refused.status == 405
            assert "GET" in refused.headers["Allow"]
            assert "error" in await refused.json()
    finally:
        await client.close()


def test_a_reload_that_changes_http_is_refused(tmp_path: Path) -> None:
    old = _load(tmp_path, 'listen = "127.0.0.1:9650"')
    _check_reloadable(old, _load(tmp_path, 'listen = "127.0.0.1:9650"'))
    with pytest.raises(NetrootError, match=r"^http cannot change while serving; restart$"):
        _check_reloadable(old, _load(tmp_path, 'listen = "127.0.0.1:9651"'))
