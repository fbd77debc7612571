"""One egress policy for every tool that touches the network.

A URL may be fetched only if its scheme is http(s), its host is not deny-listed (and is
in `only_hosts` when that is set), and *every* address it resolves to is public — unless
the host or address is in `allow_hosts` (`TROUPE_EGRESS_ALLOW_HOSTS`) or `allow_private`
is on. Callers connect to the addresses `check_url` returns, so a second DNS answer can't
swap a public address for a private one. Check again after every redirect
(`check_redirect`); a browser page checks each request with `playwright_route_handler`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tools.registry import ToolError

if TYPE_CHECKING:
    from playwright.async_api import Route

__all__ = [
    "ENV_ALLOW_HOSTS",
    "ENV_ALLOW_PRIVATE",
    "ENV_DENY_HOSTS",
    "ENV_ONLY_HOSTS",
    "CachingResolver",
    "EgressConfigError",
    "EgressDenied",
    "EgressOverrides",
    "EgressPolicy",
    "Resolver",
    "check_url",
    "playwright_route_handler",
    "system_resolver",
]

ENV_ALLOW_HOSTS = "TROUPE_EGRESS_ALLOW_HOSTS"
ENV_DENY_HOSTS = "TROUPE_EGRESS_DENY_HOSTS"
ENV_ONLY_HOSTS = "TROUPE_EGRESS_ONLY_HOSTS"
ENV_ALLOW_PRIVATE = "TROUPE_EGRESS_ALLOW_PRIVATE"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`await resolver(host, port)` -> the host's addresses as strings."""

_SCHEMES = ("http", "https")
_DOMAIN = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")
_AMBIGUOUS = re.compile(r"[\\\x00-\x20\x7f]")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPAT = ipaddress.ip_network("::/96")


class EgressDenied(ToolError):
    """A URL the egress policy refuses; not retryable, the message says which switch allows it."""

    def __init__(self, url: str, reason: str, *, fix: str, address: str | None = None):
        self.url = url
        self.reason = reason
        self.fix = fix
        self.address = address
        super().__init__(f"egress refused for {_redact(url)}: {reason}; {fix}", retryable=False)

    def __reduce__(self):  # keeps the fields when the error crosses a Ray boundary
        return (_rebuild_denied, (self.url, self.reason, self.fix, self.address))


def _rebuild_denied(url: str, reason: str, fix: str, address: str | None) -> EgressDenied:
    return EgressDenied(url, reason, fix=fix, address=address)


class EgressConfigError(ValueError):
    """Overrides that would widen a policy they may only narrow, or patterns that don't parse."""


def _redact(url: str) -> str:
    """Drop userinfo so credentials in a URL never reach an error message, event or trace."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@?#]*@", r"\1***@", url)


# -- host patterns -------------------------------------------------------------------------

def _normalize_pattern(raw: str) -> str:
    p = raw.strip().lower().rstrip(".")
    if p.startswith("."):
        p = "*" + p
    try:
        return str(ipaddress.ip_network(p.strip("[]"), strict=False))
    except ValueError:
        pass
    if not _DOMAIN.match(p):
        raise EgressConfigError(
            f"egress host pattern {raw!r} is neither a domain (example.com, *.example.com), "
            "an IP address nor a CIDR (10.0.0.0/8)"
        )
    return p


def _split(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(_normalize_pattern(i) for i in items if i and i.strip()))


def _networks(patterns: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for p in patterns:
        try:
            out.append(ipaddress.ip_network(p))
        except ValueError:
            continue
    return out


def _domain_match(host: str, patterns: Iterable[str]) -> str | None:
    """`example.com` matches it and its subdomains; `*.example.com` only the subdomains."""
    for p in patterns:
        if "/" in p:  # a CIDR (normalized patterns always carry the prefix), matched against addresses
            continue
        if p.startswith("*."):
            if host.endswith(p[1:]):
                return p
        elif host == p or host.endswith("." + p):
            return p
    return None


def _address_match(ip: IPAddress, patterns: Iterable[str]) -> str | None:
    for net in _networks(patterns):
        if ip.version == net.version and ip in net:
            return str(net)
    return None


# -- addresses -------------------------------------------------------------------------------

def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address hidden in an IPv6 one (mapped, 6to4, Teredo, NAT64, compat)."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64 or (ip in _IPV4_COMPAT and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def non_public_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address, or None when it is."""
    if ip.version == 6:
        inner = _embedded_v4(ip)  # type: ignore[arg-type]
        if inner is not None:
            why = non_public_reason(inner)
            return f"{why} (IPv4 {inner} inside IPv6)" if why else None
        if ip.is_site_local:  # type: ignore[union-attr]
            return "site-local"
    for attr, label in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(ip, attr):
            return label
    if not ip.is_global:
        return "not globally routable"
    return None


def _whatwg_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Parse hosts like `2130706433`, `0x7f.1` or `0177.0.0.1` the way browsers do.

    Python's URL parser leaves them as names; Chromium and getaddrinfo treat them as
    127.0.0.1, so the policy must see the same address.
    """
    parts = host.split(".")
    if not re.fullmatch(r"(0[xX][0-9a-fA-F]*|[0-9]+)", parts[-1]):
        return None
    bad = f"host {host!r} looks like an IPv4 address but is malformed"
    if len(parts) > 4:
        raise ValueError(bad)
    nums = []
    for part in parts:
        try:
            if part[:2].lower() == "0x":
                nums.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                nums.append(int(part, 8))
            else:
                nums.append(int(part, 10))
        except ValueError:
            raise ValueError(bad) from None
    if any(n > 255 for n in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
        raise ValueError(bad)
    value = nums[-1] + sum(n * 256 ** (3 - i) for i, n in enumerate(nums[:-1]))
    return ipaddress.IPv4Address(value)


# -- resolvers ---------------------------------------------------------------------------------

async def system_resolver(host: str, port: int) -> list[str]:
    """The OS resolver (getaddrinfo in a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class CachingResolver:
    """Remembers answers for `ttl_s`, so a page's many requests cost one lookup per host and
    the policy check and the connection see the same addresses."""

    def __init__(self, inner: Resolver = system_resolver, *, ttl_s: float = 30.0, max_entries: int = 1024):
        self._inner = inner
        self._ttl_s = ttl_s
        self._max = max_entries
        self._cache: OrderedDict[tuple[str, int], tuple[float, list[str]]] = OrderedDict()

    async def __call__(self, host: str, port: int) -> list[str]:
        key = (host, port)
        hit = self._cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        addresses = await self._inner(host, port)
        self._cache[key] = (time.monotonic() + self._ttl_s, addresses)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return addresses


# -- the policy --------------------------------------------------------------------------------

class EgressOverrides(BaseModel):
    """Changes to a policy from a deployment's user_config or a task; unset fields keep it."""

    model_config = ConfigDict(extra="forbid")

    allow_hosts: tuple[str, ...] | None = None
    deny_hosts: tuple[str, ...] | None = None
    only_hosts: tuple[str, ...] | None = None
    allow_private: bool | None = None
    max_redirects: int | None = Field(None, ge=0, le=20)

    @field_validator("allow_hosts", "deny_hosts", "only_hosts", mode="before")
    @classmethod
    def _patterns(cls, v: Any) -> tuple[str, ...] | None:
        return None if v is None else _split(v)


class EgressPolicy(BaseModel):
    """Where networked tools may connect. Build with `from_env()`; narrow per task with `restricted()`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow_hosts: tuple[str, ...] = ()
    """Domains, IPs or CIDRs reachable even at private, loopback or link-local addresses."""
    deny_hosts: tuple[str, ...] = ()
    """Domains or CIDRs never reached; wins over everything else."""
    only_hosts: tuple[str, ...] = ()
    """When set, the only domains or CIDRs reachable at all."""
    allow_private: bool = False
    """Let every non-public address through (a trusted intranet crawler); off by default."""
    max_redirects: int = Field(5, ge=0, le=20)
    resolve_timeout_s: float = Field(5.0, gt=0)

    @field_validator("allow_hosts", "deny_hosts", "only_hosts", mode="before")
    @classmethod
    def _patterns(cls, v: Any) -> tuple[str, ...]:
        return _split(v)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EgressPolicy:
        """The process-wide policy from `TROUPE_EGRESS_*` variables."""
        env = os.environ if env is None else env
        return cls(
            allow_hosts=env.get(ENV_ALLOW_HOSTS, ""),
            deny_hosts=env.get(ENV_DENY_HOSTS, ""),
            only_hosts=env.get(ENV_ONLY_HOSTS, ""),
            allow_private=env.get(ENV_ALLOW_PRIVATE, "").strip().lower() in ("1", "true", "yes", "on"),
        )

    def extended(self, overrides: EgressOverrides | Mapping[str, Any] | None) -> EgressPolicy:
        """Apply trusted (operator, deployment) overrides: lists add to ours, scalars replace."""
        o = EgressOverrides.model_validate(overrides or {})
        return self.model_copy(update={
            "allow_hosts": _split(self.allow_hosts + (o.allow_hosts or ())),
            "deny_hosts": _split(self.deny_hosts + (o.deny_hosts or ())),
            "only_hosts": _split(self.only_hosts + (o.only_hosts or ())),
            "allow_private": self.allow_private if o.allow_private is None else o.allow_private,
            "max_redirects": self.max_redirects if o.max_redirects is None else o.max_redirects,
        })

    def restricted(self, overrides: EgressOverrides | Mapping[str, Any] | None) -> EgressPolicy:
        """Apply untrusted (per-task) overrides, which may only narrow this policy.

        A task's plan may come from a model, so it can deny more hosts, confine itself to
        fewer, or follow fewer redirects, but anything that would widen access is an error.
        """
        o = EgressOverrides.model_validate(overrides or {})
        if o.allow_private and not self.allow_private:
            raise EgressConfigError(
                "a task cannot set allow_private; set TROUPE_EGRESS_ALLOW_PRIVATE=1 or the deployment's "
                "egress.allow_private instead"
            )
        extra = [h for h in o.allow_hosts or () if h not in self.allow_hosts]
        if extra:
            raise EgressConfigError(
                f"a task cannot add allow_hosts {extra}; add them to {ENV_ALLOW_HOSTS} or the "
                "deployment's egress.allow_hosts"
            )
        only = o.only_hosts or ()
        outside = [h for h in only if self.only_hosts and not _pattern_within(h, self.only_hosts)]
        if outside:
            raise EgressConfigError(
                f"task only_hosts {outside} fall outside the deployment's only_hosts {list(self.only_hosts)}; "
                f"widen {ENV_ONLY_HOSTS} or drop them from the task"
            )
        return self.model_copy(update={
            "allow_hosts": self.allow_hosts if o.allow_hosts is None else o.allow_hosts,
            "deny_hosts": _split(self.deny_hosts + (o.deny_hosts or ())),
            "only_hosts": only or self.only_hosts,
            "allow_private": self.allow_private if o.allow_private is None else o.allow_private,
            "max_redirects": min(self.max_redirects, self.max_redirects if o.max_redirects is None
                                 else o.max_redirects),
        })

    async def check_url(self, url: str, *, resolver: Resolver | None = None) -> list[str]:
        """Refuse `url` (EgressDenied) or return the addresses to connect to."""
        if _AMBIGUOUS.search(url):
            # Browsers read `\\` as `/` and drop tabs and newlines where Python's parser does
            # not, so `http://127.0.0.1\\@example.com/` would be checked as one host and
            # fetched from another.
            raise EgressDenied(url, "it contains a backslash, whitespace or a control character",
                               fix="percent-encode those characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise EgressDenied(url, f"it is not a valid URL ({exc})", fix="pass an absolute http(s) URL") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise EgressDenied(
                url, f"scheme {scheme + ':' if scheme else '(none)'} is not fetched",
                fix="only http:// and https:// URLs are allowed",
            )
        host = unquote(parts.hostname or "").rstrip(".")
        if not host:
            raise EgressDenied(url, "it has no host", fix="pass an absolute URL such as https://example.com/")
        port = port or (443 if scheme == "https" else 80)
        try:
            host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
            literal: IPAddress | None = _ip_or_none(host) if ":" in host else (_whatwg_ipv4(host) or _ip_or_none(host))
        except (UnicodeError, ValueError) as exc:
            raise EgressDenied(url, str(exc), fix="check the URL's host") from None
        name = None if literal else host

        if name and (hit := _domain_match(name, self.deny_hosts)):
            raise EgressDenied(url, f"host {name} matches deny pattern {hit!r}",
                               fix=f"remove it from {ENV_DENY_HOSTS} or the task's egress.deny_hosts")
        only_by_name = bool(name and _domain_match(name, self.only_hosts))
        if self.only_hosts and name and not only_by_name and not _networks(self.only_hosts):
            raise EgressDenied(url, f"host {name} is not among only_hosts {list(self.only_hosts)}",
                               fix=f"add it to {ENV_ONLY_HOSTS} or the task's egress.only_hosts")

        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            addresses = await self._resolve(url, host, port, resolver or system_resolver)

        for ip in addresses:
            if hit := _address_match(ip, self.deny_hosts):
                raise EgressDenied(url, f"address {ip} is in denied network {hit}", address=str(ip),
                                   fix=f"remove it from {ENV_DENY_HOSTS} or the task's egress.deny_hosts")
            if self.only_hosts and not only_by_name and not _address_match(ip, self.only_hosts):
                raise EgressDenied(url, f"host {host} is not among only_hosts {list(self.only_hosts)}",
                                   address=str(ip), fix=f"add it to {ENV_ONLY_HOSTS} or the task's egress.only_hosts")
            why = non_public_reason(ip)
            if why and not self.allow_private and not self._allowed(name, ip):
                article = "an" if why[0] in "aeiou" else "a"
                shown = f"{host} resolves to {ip}, {article}" if name else f"{ip} is {article}"
                raise EgressDenied(
                    url, f"{shown} {why} address", address=str(ip),
                    fix=f"to allow it set {ENV_ALLOW_HOSTS}={name or ip} (comma-separated hosts or CIDRs)",
                )
        return [str(ip) for ip in addresses]

    async def check_redirect(
        self, url: str, location: str, hops: int, *, resolver: Resolver | None = None
    ) -> tuple[str, list[str]]:
        """Check the `hops`-th redirect (1-based) from `url` to `location`; returns the absolute
        target and its addresses. Call it for every 3xx before following it."""
        target = urljoin(url, location)
        if hops > self.max_redirects:
            raise EgressDenied(target, f"it is redirect number {hops}, over max_redirects={self.max_redirects}",
                               fix="fetch the final URL directly or raise egress.max_redirects")
        return target, await self.check_url(target, resolver=resolver)

    def _allowed(self, name: str | None, ip: IPAddress) -> bool:
        return bool((name and _domain_match(name, self.allow_hosts)) or _address_match(ip, self.allow_hosts))

    async def _resolve(self, url: str, host: str, port: int, resolver: Resolver) -> list[IPAddress]:
        try:
            raw = await asyncio.wait_for(resolver(host, port), self.resolve_timeout_s)
        except (TimeoutError, OSError) as exc:
            raise ToolError(f"could not resolve {host} for {_redact(url)} ({str(exc) or 'timed out'}); "
                            "check the host name or retry later", retryable=True) from None
        addresses = [ip for a in raw if (ip := _ip_or_none(a.split("%", 1)[0])) is not None]
        if not addresses:
            raise ToolError(f"{host} has no usable address; check the host name", retryable=True)
        return addresses


def _ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _pattern_within(pattern: str, outer: Iterable[str]) -> bool:
    """Whether everything `pattern` matches is also matched by one of `outer`."""
    try:
        net = ipaddress.ip_network(pattern)
    except ValueError:
        net = None
    if net is not None:
        return any(net.version == o.version and net.subnet_of(o) for o in _networks(outer))  # type: ignore[arg-type]
    if pattern.startswith("*."):  # every subdomain of d is covered by a pattern on d or above it
        d = pattern[2:]
        bases = [o.removeprefix("*.") for o in outer if "/" not in o]
        return any(d == b or d.endswith("." + b) for b in bases)
    return _domain_match(pattern, outer) is not None


async def check_url(url: str, *, policy: EgressPolicy | None = None, resolver: Resolver | None = None) -> list[str]:
    """Check `url` against `policy` (default: `EgressPolicy.from_env()`); returns its addresses."""
    return await (policy or EgressPolicy.from_env()).check_url(url, resolver=resolver)


# Requests that never leave the browser; the route handler lets them through untouched.
_LOCAL_SCHEMES = ("data", "blob", "about", "chrome-extension")


def playwright_route_handler(
    policy: EgressPolicy | Callable[[], EgressPolicy],
    *,
    resolver: Resolver | None = None,
    on_refused: Callable[[EgressDenied], None] | None = None,
) -> Callable[[Route], Awaitable[None]]:
    """A `context.route("**/*", ...)` handler that aborts every request the policy refuses.

    Chromium does not pass redirects or WebSocket handshakes through routes, so a browser
    also needs a connection-level check (see `tools.web.proxy`); this handler gives early,
    clear refusals for everything a route does see.
    """
    current = policy if callable(policy) else (lambda: policy)

    async def handle(route: Route) -> None:
        url = route.request.url
        try:
            if url.split(":", 1)[0].lower() not in _LOCAL_SCHEMES:
                await current().check_url(url, resolver=resolver)
        except EgressDenied as exc:
            if on_refused:
                on_refused(exc)
            await _quietly(route.abort("blockedbyclient"))
            return
        except ToolError:
            await _quietly(route.abort("namenotresolved"))
            return
        await _quietly(route.fallback())

    return handle


async def _quietly(action: Awaitable[Any]) -> None:
    # The page may close while its request waits here; that's not an error worth raising.
    try:
        await action
    except Exception as exc:  # playwright.Error, without importing playwright here
        if "closed" not in str(exc) and "already handled" not in str(exc):
            raise
