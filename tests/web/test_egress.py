"""The egress policy on its own: no browser, and no name is ever resolved by real DNS."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from tests.web.conftest import stub_resolver
from tools.egress import (
    CachingResolver,
    EgressConfigError,
    EgressDenied,
    EgressPolicy,
    check_url,
)
from tools.registry import ToolError
from tools.web.proxy import EgressProxy

STRICT = EgressPolicy()


async def public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


@pytest.mark.parametrize("url, says", [
    ("file:///etc/passwd", "scheme file:"),
    ("data:text/html,<b>x</b>", "scheme data:"),
    ("javascript:alert(1)", "scheme javascript:"),
    ("ftp://example.com/x", "scheme ftp:"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme gopher:"),
    ("http:///nohost", "no host"),
    ("http://127.0.0.1\\@example.com/", "backslash"),
    ("http://example.com:99999/", "not a valid URL"),
])
async def test_refuses_what_is_not_a_plain_web_url(url, says):
    with pytest.raises(EgressDenied, match=says):
        await STRICT.check_url(url, resolver=public)


@pytest.mark.parametrize("host, kind", [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.251", "multicast"),
    ("240.0.0.1", "reserved"),
    ("100.64.0.1", "not globally routable"),
    ("[::1]", "loopback"),
    ("[::]", "unspecified"),
    ("[fe80::1]", "link-local"),
    ("[fc00::1]", "private"),
    ("[fec0::1]", "site-local"),
    ("[ff02::1]", "multicast"),
    ("[::ffff:127.0.0.1]", "loopback (IPv4 127.0.0.1 inside IPv6)"),
    ("[::ffff:169.254.169.254]", "link-local (IPv4"),
    ("[64:ff9b::a9fe:a9fe]", "link-local (IPv4 169.254.169.254"),  # NAT64
    ("[2002:c0a8:0101::]", "private (IPv4 192.168.1.1"),  # 6to4
    ("2130706433", "127.0.0.1"),  # decimal, as browsers read it
    ("0x7f.0.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("%31%32%37.0.0.1", "127.0.0.1"),
])
async def test_refuses_non_public_addresses(host, kind):
    with pytest.raises(EgressDenied) as err:
        await STRICT.check_url(f"http://{host}:8080/x", resolver=public)
    assert kind in err.value.message
    assert "TROUPE_EGRESS_ALLOW_HOSTS=" in err.value.message and not err.value.retryable


@pytest.mark.parametrize("name, kind", [
    ("metadata.test", "169.254.169.254, a link-local address"),
    ("intranet.test", "10.1.2.3, a private address"),
    ("mapped.test", "private (IPv4 192.168.0.1 inside IPv6)"),
])
async def test_refuses_names_that_resolve_to_private_addresses(name, kind):
    with pytest.raises(EgressDenied) as err:
        await STRICT.check_url(f"https://{name}/latest/meta-data", resolver=stub_resolver)
    assert kind in err.value.message
    assert f"TROUPE_EGRESS_ALLOW_HOSTS={name}" in err.value.message


async def test_one_private_answer_among_public_ones_is_enough_to_refuse():
    async def mixed(host, port):
        return ["93.184.216.34", "10.0.0.5"]

    with pytest.raises(EgressDenied, match="10.0.0.5"):
        await STRICT.check_url("http://example.com/", resolver=mixed)


async def test_public_address_passes_and_is_returned_for_pinning():
    assert await STRICT.check_url("https://example.com/a?b=c", resolver=public) == ["93.184.216.34"]


async def test_allow_hosts_from_env_lets_loopback_and_named_hosts_through():
    policy = EgressPolicy.from_env({"TROUPE_EGRESS_ALLOW_HOSTS": "127.0.0.1, metadata.test, 10.1.0.0/16"})
    assert await policy.check_url("http://127.0.0.1:9/", resolver=public) == ["127.0.0.1"]
    assert await policy.check_url("http://metadata.test/", resolver=stub_resolver) == ["169.254.169.254"]
    assert await policy.check_url("http://intranet.test/", resolver=stub_resolver) == ["10.1.2.3"]
    with pytest.raises(EgressDenied, match="127.0.0.2"):
        await policy.check_url("http://127.0.0.2/", resolver=public)


async def test_deny_hosts_win_and_only_hosts_confine():
    policy = EgressPolicy.from_env({
        "TROUPE_EGRESS_DENY_HOSTS": "evil.example, 93.184.0.0/16",
        "TROUPE_EGRESS_ALLOW_PRIVATE": "1",
    })
    with pytest.raises(EgressDenied, match="deny pattern 'evil.example'"):
        await policy.check_url("http://cdn.evil.example/", resolver=public)
    with pytest.raises(EgressDenied, match="denied network 93.184.0.0/16"):
        await policy.check_url("http://example.com/", resolver=public)
    assert await policy.check_url("http://10.0.0.1/") == ["10.0.0.1"]  # allow_private

    only = EgressPolicy(only_hosts=["example.com", "1password.com"])
    assert await only.check_url("https://docs.example.com/", resolver=public)
    assert await only.check_url("https://my.1password.com/", resolver=public)  # a digit first is still a name
    with pytest.raises(EgressDenied, match="not among only_hosts"):
        await only.check_url("https://example.org/", resolver=public)


async def test_task_overrides_may_only_narrow():
    deployment = EgressPolicy(allow_hosts=["127.0.0.1"], only_hosts=["example.com"], max_redirects=5)
    task = deployment.restricted({"only_hosts": ["docs.example.com"], "deny_hosts": ["x.example.com"],
                                  "max_redirects": 9})
    assert task.only_hosts == ("docs.example.com",) and task.max_redirects == 5
    assert "x.example.com" in task.deny_hosts
    for widening, says in [({"allow_private": True}, "allow_private"),
                           ({"allow_hosts": ["10.0.0.0/8"]}, "allow_hosts"),
                           ({"only_hosts": ["example.org"]}, "outside")]:
        with pytest.raises(EgressConfigError, match=says):
            deployment.restricted(widening)
    assert deployment.extended({"allow_hosts": ["10.0.0.0/8"]}).allow_hosts == ("127.0.0.1/32", "10.0.0.0/8")
    with pytest.raises(ValueError, match="neither a domain"):
        EgressPolicy(deny_hosts=["not a host!"])


async def test_redirect_helper_resolves_relative_locations_and_counts_hops():
    policy = EgressPolicy(max_redirects=2)
    assert await policy.check_redirect("https://example.com/a/b", "../c", 1, resolver=public) == (
        "https://example.com/c", ["93.184.216.34"])
    with pytest.raises(EgressDenied, match="127.0.0.1"):
        await policy.check_redirect("https://example.com/", "http://127.0.0.1/admin", 1, resolver=public)
    with pytest.raises(EgressDenied, match="max_redirects=2"):
        await policy.check_redirect("https://example.com/", "/again", 3, resolver=public)


async def test_resolution_failures_are_retryable_tool_errors():
    async def slow(host, port):
        await asyncio.sleep(10)
        return []

    with pytest.raises(ToolError, match="could not resolve nowhere.test") as err:
        await STRICT.check_url("http://nowhere.test/", resolver=stub_resolver)
    assert err.value.retryable
    with pytest.raises(ToolError, match="timed out"):
        await EgressPolicy(resolve_timeout_s=0.05).check_url("http://slow.test/", resolver=slow)


async def test_credentials_in_urls_never_reach_messages():
    with pytest.raises(EgressDenied) as err:
        await check_url("http://admin:hunter2@127.0.0.1/", policy=STRICT)
    assert "hunter2" not in str(err.value) and "***@127.0.0.1" in str(err.value)


async def test_denial_survives_pickling_with_its_fields():
    with pytest.raises(EgressDenied) as err:
        await STRICT.check_url("http://10.0.0.1/")
    again = pickle.loads(pickle.dumps(err.value))
    assert (again.url, again.address, again.retryable, str(again)) == (
        "http://10.0.0.1/", "10.0.0.1", False, str(err.value))


async def test_caching_resolver_asks_once():
    calls = []

    async def counting(host, port):
        calls.append(host)
        return ["93.184.216.34"]

    cached = CachingResolver(counting, ttl_s=60)
    for _ in range(3):
        await STRICT.check_url("http://example.com/", resolver=cached)
    assert calls == ["example.com"]


async def test_proxy_refuses_connect_and_plain_requests_before_connecting(site):
    refused: list[EgressDenied] = []
    proxy = EgressProxy(lambda: EgressPolicy(allow_hosts=["127.0.0.1"]), stub_resolver, on_refused=refused.append)
    await proxy.start()
    host, port = proxy.url.removeprefix("http://").split(":")
    try:
        async def ask(raw: bytes) -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(raw)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)  # the proxy closes after one response
            writer.close()
            return data

        assert (await ask(b"CONNECT metadata.test:443 HTTP/1.1\r\nHost: metadata.test:443\r\n\r\n")).startswith(
            b"HTTP/1.1 403")
        denied = await ask(b"GET http://10.9.9.9/ HTTP/1.1\r\nHost: 10.9.9.9\r\n\r\n")
        assert denied.startswith(b"HTTP/1.1 403") and b"x-troupe-egress: refused" in denied.lower()
        before = len(site.requests)
        target = site.url.removeprefix("http://")
        ok = await ask(f"GET {site.url}/whoami HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert ok.startswith(b"HTTP/1.1 200") and b"nobody" in ok
        assert site.requests[before:] == [("GET", "/whoami")]
        assert [e.address for e in refused] == ["169.254.169.254", "10.9.9.9"]
    finally:
        await proxy.close()
