"""``RedisStore``: the API of ``Store`` on a Redis (or Valkey) server, for many processes.

Each key is a Redis string named ``<namespace>:<key>`` holding the value's compact UTF-8 JSON,
the very bytes ``Store`` writes (so the 16,384-byte limit is the same); a TTL is Redis's own
(``SET ... EX``), counted down by the server's clock.  Arguments are checked by
:mod:`mmapkv.codec`, as ``Store`` checks them, before anything is sent.  redis-py is imported
when a ``RedisStore`` is made, not before: ``import mmapkv`` works without it (where it is
installed, portalocker imports it anyway).

The commands behind each call, and where the answers differ from ``Store``'s, are in
docs/scaling.md.  In short: Redis deletes an expired key itself, so it reads as
``KeyNotFoundError``, never ``KeyExpiredError``; ``len``, ``keys`` and ``items`` walk the
namespace with ``SCAN`` (O(keys in the database), never ``KEYS``); ``clear`` is not atomic;
and there is no lock: any number of threads, processes and machines may share a namespace.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import math
import re
import threading
from collections.abc import Iterable, Iterator, ItemsView, Mapping, MutableMapping, ValuesView
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar, overload
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from . import codec
from .errors import (
    CorruptStoreError,
    InvalidArgumentError,
    InvalidValueError,
    KeyExistsError,
    KeyNotFoundError,
    MmapKVError,
    StoreClosedError,
    StoreFullError,
    StoreUnavailableError,
)
from .forks import ForkRegistry
from .format import MAX_VALUE_BYTES
from .views import Items, Values

__all__ = ["RedisStore", "RedisStats", "DEFAULT_NAMESPACE", "DEFAULT_TIMEOUT", "MIN_SERVER_VERSION",
           "INSTALL_HINT"]

DEFAULT_NAMESPACE = "mmapkv"
DEFAULT_TIMEOUT = 5.0             #: seconds to connect, and to wait for each reply
MIN_SERVER_VERSION = (7, 0)       #: SET NX GET, PEXPIRETIME and script flags need 7.0
INSTALL_HINT = 'pip install "mmapkv[redis]"'
SCAN_BATCH = 1000                 #: keys per SCAN (a hint to the server) and per MGET
URL_SCHEMES = ("redis", "rediss", "unix")

_T = TypeVar("_T")
_MISSING: Any = object()
_KEEP: Any = object()   # replace(): keep the key's TTL

# Lua runs atomically on the server: no other client's command runs in between, and with
# the AOF on, the script's writes are logged as one MULTI/EXEC, which a restart replays
# whole or not at all.  The "#!lua" line makes Redis refuse the whole script up front when
# it is out of memory, instead of stopping it part way.

#: KEYS: the keys.  ARGV[1]: "check" (write nothing if any key exists; return its 1-based
#: position) or "overwrite".  Then per key: value, expiry option ("" none, "EX" seconds from
#: now, "PXAT" unix milliseconds) and its number.
_WRITE_BATCH = """#!lua
if ARGV[1] == "check" then
  for i, key in ipairs(KEYS) do
    if redis.call("EXISTS", key) == 1 then return i end
  end
end
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 3
  if ARGV[at + 1] == "" then
    redis.call("SET", key, ARGV[at])
  else
    redis.call("SET", key, ARGV[at], ARGV[at + 1], ARGV[at + 2])
  end
end
return 0
"""

#: PERSIST answers 0 both for a missing key and for one without a TTL; Store.persist tells
#: them apart (KeyNotFoundError / False), so the script does too: -1, 0 or 1.  It allocates
#: nothing, so it runs at maxmemory, as PERSIST itself and EXPIRE do ("allow-oom").
_PERSIST = """#!lua flags=allow-oom
if redis.call("EXISTS", KEYS[1]) == 0 then return -1 end
return redis.call("PERSIST", KEYS[1])
"""


#: pop's read and delete at once (as ``GETDEL``), with the key's PEXPIRETIME, so that a value
#: this process cannot decode goes back as it was (``_PUT_BACK``) instead of being lost.
#: allow-oom: it only frees memory.
_TAKE = """#!lua flags=allow-oom
local value = redis.call("GET", KEYS[1])
if not value then return false end
local expiry = redis.call("PEXPIRETIME", KEYS[1])
redis.call("DEL", KEYS[1])
return {value, expiry}
"""

#: ARGV: what ``_TAKE`` returned.  NX: a value another client stored meanwhile stays.
#: allow-oom: it takes back no more than ``_TAKE`` freed.
_PUT_BACK = """#!lua flags=allow-oom
if tonumber(ARGV[2]) > 0 then
  return redis.call("SET", KEYS[1], ARGV[1], "NX", "PXAT", ARGV[2])
end
return redis.call("SET", KEYS[1], ARGV[1], "NX")
"""


#: The reads a server at its maxmemory still answers: a script flagged no-writes runs there,
#: where a MULTI refuses every command queued in it, GET included.  ``_FIRST_STORED``: the
#: 1-based position of the first of KEYS stored, or 0.  ``_READ_WITH_EXPIRY``: each key's
#: value (nil if missing) and PEXPIRETIME, read at one instant.
_FIRST_STORED = """#!lua flags=no-writes
for i, key in ipairs(KEYS) do
  if redis.call("EXISTS", key) == 1 then return i end
end
return 0
"""
_READ_WITH_EXPIRY = """#!lua flags=no-writes
local answers = {}
for _, key in ipairs(KEYS) do
  answers[#answers + 1] = redis.call("GET", key)
  answers[#answers + 1] = redis.call("PEXPIRETIME", key)
end
return answers
"""


class RedisClient(Protocol):
    """A ``redis.Redis`` client, as far as a type checker needs to know (the constructor
    checks its class at run time; redis-py is not imported for the annotation)."""

    def execute_command(self, *args: Any, **options: Any) -> Any: ...

    def pipeline(self, transaction: bool = ...) -> Any: ...


@dataclass(frozen=True)
class RedisStats:
    """What ``RedisStore.stats()`` reports.  Unlike ``StoreStats`` there is no file, slot
    or table: the server's memory is shared by every namespace and database on it."""

    url: str                     #: the server, without its password
    namespace: str
    server_version: str
    live_keys: int               #: keys of this namespace (what ``len()`` says)
    keys_with_ttl: int
    max_value_bytes: int         #: largest value a key can hold (as ``Store``)
    used_memory: int             #: bytes the whole server uses (INFO memory)
    max_memory: int              #: the server's ``maxmemory``; 0: no limit
    aof_enabled: bool            #: ``appendonly yes``: writes are logged as they happen
    appendfsync: str | None      #: "always", "everysec" or "no"; None if CONFIG is refused


def _import_redis() -> Any:
    try:
        return importlib.import_module("redis")
    except ImportError as exc:
        raise StoreUnavailableError(f"RedisStore needs redis-py, which is not installed: "
                                    f"{INSTALL_HINT}") from exc


class _OwedReplies:
    """Mixed into the connections of a client RedisStore makes from a URL: a connection
    that counts the replies the server still owes it, and is dropped (reconnected) before
    it sends again if any are, or if its last connect stopped half way.

    redis-py sends a command and then reads its reply; a Ctrl-C between the two put the
    connection back in the pool with the reply unread, and every later command on it read
    the one before's, for good (``read("b")`` answered a's value; a ``create`` that wrote
    said ``KeyExistsError``).  A Ctrl-C inside a connect, after its socket and before its
    handshake, left a connection whose every read failed with ``AttributeError``."""

    _owed = 0           #: replies not read yet
    _packed = 1         #: commands in what ``pack_commands`` packed last: a pipeline's send
    _ready = False      #: connected, handshake done
    _connecting = False  #: inside ``connect``: the handshake's own commands go through as they are

    def connect(self) -> None:
        if self._ready:
            return
        try:
            self._connecting = True
            if self._sock:  # type: ignore[attr-defined]  # a connect interrupted half way
                self.disconnect()
            super().connect()  # type: ignore[misc]
        finally:
            self._connecting = False
        self._ready = True

    def pack_commands(self, commands: Iterable[Any]) -> Any:
        commands = list(commands)
        self._packed = len(commands)
        return super().pack_commands(commands)  # type: ignore[misc]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        count, self._packed = self._packed, 1
        if not self._connecting:
            if self._owed > 0:
                self.disconnect()  # the unread replies go with the socket
            self.connect()
            if check_health:
                self.check_health()  # type: ignore[attr-defined]
            self._owed += count  # before the send: counted and not sent only costs a reconnect
        super().send_packed_command(command, check_health=False)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().read_response(*args, **kwargs)  # type: ignore[misc]
        except Exception as exc:  # an error reply was read whole; a failed read disconnected
            if isinstance(exc, _import_redis().exceptions.ResponseError) and not self._connecting:
                self._owed -= 1
            raise
        if not self._connecting:
            self._owed -= 1
        return response

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._ready = False
        super().disconnect(*args, **kwargs)  # type: ignore[misc]
        self._owed = 0  # after: interrupted half way (its parser dropped, not its socket), it is done again


_COUNTING_CLASSES: dict[type, type] = {}


def _counting_connection(redis: Any, scheme: str) -> type:
    """The connection class (of *scheme*'s) that counts its owed replies."""
    base = {"redis": redis.Connection, "rediss": redis.SSLConnection,
            "unix": redis.UnixDomainSocketConnection}[scheme]
    made = _COUNTING_CLASSES.get(base)
    if made is None:
        made = _COUNTING_CLASSES[base] = type(f"Counting{base.__name__}", (_OwedReplies, base), {})
    return made


# The stores whose client they made: a forked child gives each a new connection pool.
# redis-py's own reset in the child takes the pool's lock, which a parent thread may have
# held at the fork: then the child's first call waited forever.
_OWN_CLIENTS: ForkRegistry[RedisStore] = ForkRegistry(lambda store: store._new_pool())


def _glob_escape(text: bytes) -> bytes:
    """*text* with SCAN's glob characters escaped, so a MATCH pattern takes it literally."""
    for special in (b"\\", b"*", b"?", b"[", b"]"):
        text = text.replace(special, b"\\" + special)
    return text


def _public_url(url: str) -> str:
    """*url* without its password, for messages and ``RedisStore.url``: the one of
    ``user:password@`` and any ``password=`` of the query (redis-py reads both; the
    query is the usual place for a ``unix://`` socket's).  *url* must parse (``urlsplit``);
    the rest of it is kept as written."""
    base, mark, query = url.partition("?")
    parts = urlsplit(base)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)
        base = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc[-1]}"))
    query, hash_mark, fragment = query.partition("#")
    fields = query.split("&")  # as redis-py's parse_qs splits it
    for i, field in enumerate(fields):
        name = field.split("=", 1)[0]
        if unquote_plus(name).lower() == "password":
            fields[i] = f"{name}=***"
    return base + mark + "&".join(fields) + hash_mark + fragment


def _client_url(client: Any) -> str:
    """A URL naming the server a redis-py client talks to (no password)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    scheme = "rediss" if "ssl_cert_reqs" in kwargs else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def _check_connection(kwargs: dict[str, Any], url: str) -> None:
    """Refuse the connection settings (a URL's query, or a client's own) with which a
    ``RedisStore`` could not work exactly, before the first connection: a text encoding
    other than UTF-8 would garble every value, with no error, and a host name that cannot be
    looked up or a protocol redis-py lacks are a bad URL, not a server that is down."""
    encoding = kwargs.get("encoding", "utf-8")
    try:
        utf8 = codecs.lookup(encoding).name == "utf-8"
    except (LookupError, TypeError):
        utf8 = False
    if not utf8:
        raise InvalidArgumentError(f"{url}: the client's encoding is {encoding!r}; mmapkv's keys and "
                                   "values are UTF-8, so a RedisStore needs encoding='utf-8' (redis-py's default)")
    if kwargs.get("decode_responses") and kwargs.get("encoding_errors", "strict") != "strict":
        raise InvalidArgumentError(f"{url}: the client decodes replies with encoding_errors="
                                   f"{kwargs['encoding_errors']!r}, which would change bytes that are not "
                                   "UTF-8 instead of reporting them; use 'strict' (the default)")
    if kwargs.get("protocol") not in (None, 2, 3, "2", "3"):
        raise InvalidArgumentError(f"{url}: protocol must be 2 or 3, got {kwargs['protocol']!r}")
    host = kwargs.get("host")
    if isinstance(host, str):
        try:
            host.encode("idna")  # what the connection's getaddrinfo does first
        except UnicodeError as exc:
            raise InvalidArgumentError(f"{url}: {host!r} is not a host name ({exc})") from None


class RedisStore(MutableMapping[str, dict[str, Any]]):
    """The API of :class:`~mmapkv.Store` on a Redis (or Valkey) server, for many processes.

    Keys, values and TTLs obey ``Store``'s rules and raise its exceptions; writes are
    atomic as there (a batch is one Lua script: all of it or none of it, and no other
    client sees it half done).  Any number of threads, processes and machines may use one
    namespace at once; two namespaces on one server never see each other's keys.

    >>> store = RedisStore("redis://localhost:6379/0", namespace="app")  # doctest: +SKIP
    >>> store.create("user:1", {"name": "Ada"}, ttl=3600)  # doctest: +SKIP
    >>> store.read("user:1")  # doctest: +SKIP
    {'name': 'Ada'}

    What differs from ``Store`` (docs/scaling.md has the whole list): an expired key is
    deleted by the server, so it reads as ``KeyNotFoundError`` (``KeyExpiredError``'s base
    class), never ``KeyExpiredError``; ``len``, ``keys``, ``items`` and ``values`` walk the
    namespace with ``SCAN``, O(keys in the database); ``clear`` is not atomic against other
    writers; there is no ``flush`` (durability is the server's ``appendonly``/``appendfsync``).

    :param url_or_client: ``redis://[user:password@]host[:port][/db]``, ``rediss://...``
        (TLS) or ``unix:///path/to/socket[?db=N]``; or a ``redis.Redis`` client, which is
        used as it is (its own timeouts and retries apply) and not closed by :meth:`close`.
    :param namespace: the prefix of this store's keys (``<namespace>:<key>``): a non-empty
        ``str`` without ``:`` (so one namespace is never the start of another's keys) or NUL.
    :param socket_timeout: seconds to connect and to wait for each reply; a server that is
        down, unreachable or stuck makes a call raise ``StoreUnavailableError`` within it.
        A URL's client does not retry: a write whose reply is lost is not sent twice.
    :raises StoreUnavailableError: redis-py is not installed, or the server cannot be
        reached, refuses us, or is older than Redis 7.0.
    :raises InvalidArgumentError: a bad URL, client, *namespace* or *socket_timeout*.
    """

    def __init__(self, url_or_client: str | RedisClient, *, namespace: str = DEFAULT_NAMESPACE,
                 socket_timeout: float = DEFAULT_TIMEOUT) -> None:
        self._client: Any = None
        if not isinstance(namespace, str) or not namespace or ":" in namespace or "\0" in namespace:
            raise InvalidArgumentError(f"namespace must be a non-empty str without ':' or NUL, got {codec.shown(namespace)}")
        try:
            prefix = namespace.encode("utf-8") + b":"
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"namespace {namespace!r} is not valid Unicode") from None
        if isinstance(socket_timeout, bool) or not isinstance(socket_timeout, (int, float)) \
                or not 0 < socket_timeout <= threading.TIMEOUT_MAX:  # the most a socket takes
            raise InvalidArgumentError(f"socket_timeout must be seconds > 0 and at most "
                                       f"{threading.TIMEOUT_MAX:g}, got {socket_timeout!r:.40}")
        if not isinstance(url_or_client, str) and not hasattr(url_or_client, "execute_command"):
            raise InvalidArgumentError(f"url_or_client must be a redis:// URL or a redis.Redis client, "
                                       f"not {type(url_or_client).__name__}")
        if isinstance(url_or_client, str):
            try:
                scheme = urlsplit(url_or_client).scheme
            except ValueError as exc:  # "Invalid IPv6 URL": the URL is not shown, it may hold a password
                raise InvalidArgumentError(f"bad Redis URL: {exc}") from None
            if scheme not in URL_SCHEMES:
                raise InvalidArgumentError(f"the URL must start with redis://, rediss:// or unix://, "
                                           f"got {_public_url(url_or_client)!r}")
        redis = _import_redis()
        self._errors = redis.exceptions
        self._timeout: float | None = float(socket_timeout)
        if isinstance(url_or_client, str):
            try:
                # No retries: a create whose reply was lost must not be sent again (the
                # second try would say KeyExistsError about our own write), and a server
                # that is down must fail the call within the timeout, not after backoffs.
                # As many connections as threads: redis-py 8's pool refuses the 101st
                # ("Too many connections", which would read as a server unavailable).
                client = redis.Redis.from_url(
                    url_or_client, socket_timeout=self._timeout, socket_connect_timeout=self._timeout,
                    retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), decode_responses=False,
                    connection_class=_counting_connection(redis, scheme), max_connections=2 ** 31)
            except ValueError as exc:
                raise InvalidArgumentError(f"bad Redis URL {_public_url(url_or_client)!r}: {exc}") from None
            self._owns_client = True
            self._url = _public_url(url_or_client)
        else:
            if not isinstance(url_or_client, redis.Redis):
                raise InvalidArgumentError(f"url_or_client must be a redis:// URL or a redis.Redis "
                                           f"client, not {type(url_or_client).__name__}")
            client = url_or_client
            self._owns_client = False
            self._url = _client_url(client)
            self._timeout = client.connection_pool.connection_kwargs.get("socket_timeout")  # its own
        self._namespace = namespace
        self._where = f"{self._url} (namespace {namespace!r})"
        self._prefix = prefix
        self._pattern = _glob_escape(prefix) + b"*"
        self._client = client
        self._scripts: dict[str, str] = {}
        try:
            _check_connection(client.connection_pool.connection_kwargs, self._url)
            try:
                with self._server() as r:
                    info = r.info("server")
            except TypeError as exc:  # a URL option the connection class does not take
                if not self._owns_client:
                    raise
                raise InvalidArgumentError(f"bad Redis URL {self._url!r}: {exc}") from None
            version = str(info.get("redis_version", "0"))
            numbers = re.match(r"(\d+)\.(\d+)", version)  # "7.0.15"; "7.2-rc1" would do too
            if numbers is None or (int(numbers[1]), int(numbers[2])) < MIN_SERVER_VERSION:
                raise StoreUnavailableError(
                    f"{self._url} runs Redis {version}; RedisStore needs Redis "
                    f"{'.'.join(map(str, MIN_SERVER_VERSION))} or later (or Valkey)")
        except BaseException:
            self.close()
            raise
        self._version = version
        if self._owns_client:
            _OWN_CLIENTS.add(self)

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """The server's URL, without its password."""
        return self._url

    @property
    def namespace(self) -> str:
        return self._namespace

    @contextlib.contextmanager
    def _server(self) -> Iterator[Any]:
        """The client, ready for use, and every redis-py error turned into mmapkv's (the
        original chained): the one place that checks for ``close`` and translates."""
        client = self._client
        if client is None:
            raise StoreClosedError(f"the RedisStore of {self._where} is closed")
        try:
            yield client
        except Exception as exc:
            if self._client is None:  # closed by another thread meanwhile: redis-py, its
                # connections pulled away, raises what it meets (ValueError, AttributeError)
                raise StoreClosedError(f"the RedisStore of {self._where} was closed during the call, "
                                       "which may or may not have taken effect") from exc
            if isinstance(exc, (self._errors.RedisError, getattr(self._errors, "ChildDeadlockedError", ()))):
                raise self._translate(exc) from exc
            if isinstance(exc, UnicodeDecodeError):  # a decode_responses=True client met binary data
                raise CorruptStoreError(f"{self._where}: the server sent bytes that are not UTF-8, which "
                                        f"a client with decode_responses=True cannot read: {exc}") from exc
            raise
        except BaseException:  # Ctrl-C: a client of the caller's counts no owed replies (ours
            # do, _OwedReplies), so its idle connections go, the one that may owe one with them
            if not self._owns_client:
                with contextlib.suppress(Exception):
                    client.connection_pool.disconnect(inuse_connections=False)
            raise

    def _first_stored(self, names: list[bytes]) -> int:
        """The 1-based position of the first of *names* stored, or 0: what a refused write
        asks before it says so, since a server at its maxmemory refuses a ``SET NX`` before
        looking whether the key exists, and ``Store`` says ``KeyExistsError`` first."""
        with self._server() as r:
            return int(self._eval(r, _FIRST_STORED, names, []))

    def _translate(self, exc: Exception) -> MmapKVError:
        errors, text = self._errors, " ".join(str(exc).split())
        # redis-py turns "-OOM ..." into OutOfMemoryError and drops the "OOM" (since 4.x)
        if isinstance(exc, getattr(errors, "OutOfMemoryError", ())) or text.startswith("OOM"):
            return StoreFullError(f"{self._where} is full: the server refused the write ({text}); "
                                  "delete keys, or raise the server's maxmemory")
        if text.startswith("WRONGTYPE"):
            return CorruptStoreError(f"{self._where}: a key of the namespace holds a Redis type other "
                                     f"than a string, which mmapkv never writes ({text})")
        if isinstance(exc, (errors.ConnectionError, errors.TimeoutError)):
            timeout = f"socket timeout {self._timeout:g} s" if self._timeout else "no socket timeout"
            return StoreUnavailableError(f"{self._where} is unavailable: {text or type(exc).__name__} "
                                         f"({timeout})")
        if isinstance(exc, errors.DataError):
            return InvalidArgumentError(f"{self._where}: {text}")
        if isinstance(exc, getattr(errors, "ChildDeadlockedError", ())):
            return StoreUnavailableError(f"{self._where} is unavailable in this forked child: a thread of "
                                         "the parent held the connection pool's lock at the fork "
                                         "(redis-py's ChildDeadlockedError); open a RedisStore here")
        return StoreUnavailableError(f"{self._where} refused the command: {text}")

    def _eval(self, r: Any, script: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run a Lua script: by its SHA1 (the server caches it), sending the text only the
        first time a server lacks it (after a restart, say)."""
        sha = self._scripts.get(script)
        if sha is None:
            import hashlib

            sha = self._scripts[script] = hashlib.sha1(script.encode()).hexdigest()
        try:  # bytes even through a decode_responses=True client: values come back as stored
            return r.execute_command("EVALSHA", sha, len(keys), *keys, *args, NEVER_DECODE=True)
        except self._errors.NoScriptError:
            return r.execute_command("EVAL", script, len(keys), *keys, *args, NEVER_DECODE=True)

    def _new_pool(self) -> None:
        """In a forked child: a connection pool of its own, like the parent's."""
        client = self._client
        if client is not None:
            pool = client.connection_pool
            client.connection_pool = type(pool)(connection_class=pool.connection_class,
                                                max_connections=pool.max_connections, **pool.connection_kwargs)

    def close(self) -> None:
        """Drop the connections (of a client made from a URL; a client given to the
        constructor is left open).  Idempotent; then every method raises
        ``StoreClosedError``."""
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            client.close()

    def __enter__(self) -> RedisStore:
        if self._client is None:  # as a closed file refuses `with`
            raise StoreClosedError(f"the RedisStore of {self._where} is closed")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._client is not None else "closed"
        return f"<mmapkv.RedisStore {self._where} {state}>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        """Refuse ``pickle`` and ``copy``, as ``Store`` does: a copy would share the client,
        and closing either would close it under the other.  (The URL it keeps has no
        password, so a pickle could not reconnect anyway.)"""
        raise InvalidArgumentError(
            f"a RedisStore cannot be copied or pickled; open one with the server's URL in "
            f"each process (this one: {self._where})")

    # ----------------------------------------------------------------- helpers

    def _name(self, key: str) -> bytes:
        """The Redis key of *key* (validated)."""
        return self._prefix + codec.key_bytes(key)

    def _decode(self, raw: bytes | str, key: str) -> dict[str, Any]:
        try:
            return codec.decode_text(raw)
        except ValueError as exc:
            raise CorruptStoreError(f"{self._where}: the value of key {str.__repr__(key)} is not a JSON object "
                                    f"(not written by mmapkv?): {exc}") from None

    def _missing(self, key: str) -> KeyNotFoundError:
        return KeyNotFoundError(f"key {str.__repr__(key)} is not in {self._where}")

    def _key_of(self, name: bytes) -> str | None:
        """The mmapkv key of a Redis key of the namespace; None for one mmapkv could not
        have written (another program's, under our prefix)."""
        try:
            key = name[len(self._prefix):].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return key if 0 < len(key) <= codec.MAX_KEY_LENGTH else None

    def _scan(self, every_type: bool = False) -> Iterator[list[tuple[str | None, bytes]]]:
        """The namespace's Redis keys in batches, each once: (mmapkv key or None, name).

        Only keys holding strings, what mmapkv writes (``SCAN``'s ``TYPE``), unless
        *every_type*: another program's hash under the namespace is none of the store's
        keys, but ``verify`` reports it and ``clear`` removes it.  Names come as bytes
        even through a ``decode_responses=True`` client (``NEVER_DECODE``), so one name
        that is not UTF-8 cannot make the whole reply unreadable.  ``SCAN`` may return a
        key twice (while the server resizes its table); a set of the names seen drops the
        repeats, so memory grows with the keys listed.
        """
        seen: set[bytes] = set()
        cursor = 0
        options = ["MATCH", self._pattern, "COUNT", SCAN_BATCH] + ([] if every_type else ["TYPE", "string"])
        while True:
            with self._server() as r:
                cursor, names = r.execute_command("SCAN", cursor, *options, NEVER_DECODE=True)
            batch = [(self._key_of(name), name) for name in names if name not in seen]
            seen.update(name for _, name in batch)
            if batch:
                yield batch
            if not cursor:
                return

    def _batches(self, keys: Iterable[str] | None) -> Iterator[list[tuple[str, bytes]]]:
        """Batches of (key, Redis key): of *keys* (each validated), or of every key."""
        if keys is None:
            for found in self._scan():
                yield [(key, name) for key, name in found if key is not None]
            return
        batch: list[tuple[str, bytes]] = []
        for key in keys:
            batch.append((key, self._name(key)))
            if len(batch) == SCAN_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _now(self) -> float:
        """The server's time, unix seconds: the clock the server's TTLs run on."""
        with self._server() as r:
            seconds, micros = r.time()
        return int(seconds) + int(micros) / 1e6

    # ----------------------------------------------------------------- reads

    def read(self, key: str) -> dict[str, Any]:
        """Return the value stored under *key*, as a new ``dict``.  One ``GET``.

        :raises KeyNotFoundError: *key* is not stored, or expired (the server deleted it).
        :raises InvalidKeyError: *key* is not a valid key.
        :raises StoreUnavailableError: the server is down, refused, or did not answer in time.
        """
        name = self._name(key)
        with self._server() as r:
            raw = r.get(name)
        if raw is None:
            raise self._missing(key)
        return self._decode(raw, key)

    __getitem__ = read

    @overload
    def get(self, key: str) -> dict[str, Any] | None: ...
    @overload
    def get(self, key: str, default: dict[str, Any]) -> dict[str, Any]: ...
    @overload
    def get(self, key: str, default: _T) -> dict[str, Any] | _T: ...

    def get(self, key: str, default: Any = None) -> Any:
        """Like :meth:`read`, but return *default* for a missing or expired key."""
        name = self._name(key)
        with self._server() as r:
            raw = r.get(name)
        return default if raw is None else self._decode(raw, key)

    def __contains__(self, key: object) -> bool:
        """True if *key* is stored and unexpired (``EXISTS``).  A key that could never be
        stored raises ``InvalidKeyError``, as ``Store`` does."""
        name = self._name(key)  # type: ignore[arg-type]  # validated: any object may come
        with self._server() as r:
            return bool(r.exists(name))

    def __len__(self) -> int:
        """The number of keys in the namespace: a ``SCAN`` of the database, O(keys in it)."""
        return sum(1 for batch in self._batches(None) for _ in batch)

    def keys(self) -> list[str]:  # type: ignore[override]  # a snapshot list, as Store's
        """The keys of the namespace (a list; a ``SCAN`` of the database, O(keys in it)).
        Keys written or deleted meanwhile may or may not be listed."""
        return [key for batch in self._batches(None) for key, _ in batch]

    def __iter__(self) -> Iterator[str]:
        """The keys, streamed batch by batch from ``SCAN``, each once (``Store`` streams too,
        a table segment at a time)."""
        for batch in self._batches(None):
            for key, _ in batch:
                yield key

    def items(self) -> ItemsView[str, dict[str, Any]]:
        """The (key, value) pairs, a ``SCAN`` batch and one ``MGET`` at a time; keys deleted
        or expired meanwhile are skipped."""
        return Items(self)

    def values(self) -> ValuesView[dict[str, Any]]:
        """The values, a ``SCAN`` batch and one ``MGET`` at a time."""
        return Values(self)

    def _pairs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for batch in self._batches(None):
            with self._server() as r:
                raws = r.mget([name for _, name in batch])
            for (key, _), raw in zip(batch, raws):
                if raw is not None:
                    yield key, self._decode(raw, key)

    def items_with_expiry(self, keys: Iterable[str] | None = None
                          ) -> Iterator[tuple[str, dict[str, Any], float | None]]:
        """(key, value, absolute expiry) for every key, or for *keys*: the expiry in unix
        seconds by the server's clock (``PEXPIRETIME``), ``None`` for a key without a TTL.
        Missing and expired keys are skipped.  What ``mmapkv copy`` reads; a batch of keys
        per script run, so each value comes with its own expiry (a script, not a
        ``MULTI``, which a server at its maxmemory refuses even for reads).

        :raises InvalidArgumentError: *keys* is not an iterable of keys (one str is not).
        """
        return self._items_with_expiry(None if keys is None else codec.keys_to_look_up(keys))

    def _items_with_expiry(self, keys: Iterable[str] | None) -> Iterator[tuple[str, dict[str, Any], float | None]]:
        for batch in self._batches(keys):
            with self._server() as r:
                answers = self._eval(r, _READ_WITH_EXPIRY, [name for _, name in batch], [])
            for (key, _), raw, expiry in zip(batch, answers[::2], answers[1::2]):
                if raw is not None:
                    yield key, self._decode(raw, key), (expiry / 1000 if expiry > 0 else None)

    def ttl(self, key: str) -> int | None:
        """Seconds until *key* expires, rounded up (``None``: it never expires).  ``PTTL``.

        :raises KeyNotFoundError: *key* is not stored, or expired.
        """
        name = self._name(key)
        with self._server() as r:
            millis = r.pttl(name)
        if millis == -2:
            raise self._missing(key)
        return None if millis == -1 else max(1, math.ceil(millis / 1000))

    def stats(self) -> RedisStats:
        """Counts of the namespace and the server's memory; O(keys in the database).

        ``live_keys`` and ``keys_with_ttl`` are counted with ``SCAN`` and ``PTTL``;
        ``used_memory`` and ``max_memory`` are the whole server's (``INFO memory``).
        """
        live = with_ttl = 0
        for batch in self._batches(None):
            with self._server() as r:
                pipe = r.pipeline(transaction=False)
                for _, name in batch:
                    pipe.pttl(name)
                ttls = pipe.execute()
            live += sum(1 for t in ttls if t != -2)
            with_ttl += sum(1 for t in ttls if t >= 0)
        with self._server() as r:
            memory = r.info("memory")
            persistence = r.info("persistence")
            try:
                appendfsync: str | None = r.config_get("appendfsync").get("appendfsync")
            except self._errors.ResponseError:  # CONFIG renamed or forbidden (managed Redis)
                appendfsync = None
        if isinstance(appendfsync, bytes):
            appendfsync = appendfsync.decode()
        return RedisStats(
            url=self._url, namespace=self._namespace, server_version=self._version,
            live_keys=live, keys_with_ttl=with_ttl, max_value_bytes=MAX_VALUE_BYTES,
            used_memory=int(memory.get("used_memory", 0)), max_memory=int(memory.get("maxmemory", 0)),
            aof_enabled=bool(int(persistence.get("aof_enabled", 0))), appendfsync=appendfsync)

    def verify(self) -> list[str]:
        """Walk the namespace and return what ``read`` could not read (empty list: all
        good): keys mmapkv could not have written, values that are not strings, not JSON
        objects or over 16,384 bytes.  For tests and post-mortems; O(keys in the database).
        """
        problems = []
        for batch in self._scan(every_type=True):
            with self._server() as r:
                pipe = r.pipeline(transaction=False)
                for _, name in batch:
                    pipe.type(name)
                    pipe.execute_command("GET", name, NEVER_DECODE=True)  # bytes: sizes in bytes
                answers = pipe.execute(raise_on_error=False)
            for (key, name), kind, raw in zip(batch, answers[::2], answers[1::2]):
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                if key is None:
                    problems.append(f"{name!r} is under the namespace but is not an mmapkv key "
                                    f"(1 to {codec.MAX_KEY_LENGTH} characters of UTF-8)")
                elif kind == "none":
                    continue  # deleted or expired meanwhile
                elif kind != "string":
                    problems.append(f"key {str.__repr__(key)} holds a Redis {kind}, not a string")
                elif isinstance(raw, Exception) or raw is None:
                    continue
                elif len(raw) > MAX_VALUE_BYTES:
                    problems.append(f"key {str.__repr__(key)} holds {len(raw):,} bytes; the limit is {MAX_VALUE_BYTES:,}")
                else:
                    try:
                        codec.decode_text(raw)
                    except ValueError as exc:
                        problems.append(f"key {str.__repr__(key)} does not hold a JSON object: {exc}")
        return problems

    # ----------------------------------------------------------------- writes

    def create(self, key: str, value: Mapping[str, Any], ttl: int | None = None) -> None:
        """Store *value* under a new *key*, optionally expiring *ttl* seconds from now
        (``SET NX [EX ttl]``: one round trip, atomic against every other client).

        :raises KeyExistsError: *key* is stored and unexpired.
        :raises InvalidKeyError, InvalidValueError, ValueTooLargeError, InvalidTTLError:
            a bad argument; nothing is sent.
        :raises StoreFullError: the server is at its ``maxmemory`` and refuses writes.
        """
        name = self._name(key)
        data, _ = codec.encode(value)
        ttl = codec.check_ttl(ttl)
        try:
            with self._server() as r:
                done = r.set(name, data, nx=True, ex=ttl)
        except StoreFullError:
            if not self._first_stored([name]):
                raise
            done = False
        if not done:
            raise KeyExistsError(f"key {str.__repr__(key)} already exists in {self._where}")

    def delete(self, key: str) -> None:
        """Remove *key* (``DEL``).

        :raises KeyNotFoundError: *key* is not stored, or expired.
        """
        name = self._name(key)
        with self._server() as r:
            removed = r.delete(name)
        if not removed:
            raise self._missing(key)

    __delitem__ = delete

    def batch_create(self, items: Mapping[str, Mapping[str, Any]] | Iterable[Any],
                     ttl: int | None = None) -> None:
        """Create many keys at once: all of them, or (if any key exists, or any item is
        bad) none.  The items are those of :meth:`Store.batch_create`; every one is
        checked before anything is sent, then one Lua script checks that no key exists
        and writes them all, atomically: no other client sees part of the batch, and a
        restart of the server (with the AOF on) keeps all of it or none.

        :raises KeyExistsError: a key is stored already, or given twice.
        :raises InvalidArgumentError: an item is not a 2- or 3-tuple or an entry dict.
        """
        checked = codec.batch_items(items, ttl)
        args: list[Any] = ["check"]
        for _, _, data, _, item_ttl in checked:
            args += [data, "", ""] if item_ttl is None else [data, "EX", item_ttl]
        self._write_batch(checked, args)

    def restore_entries(self, entries: Iterable[tuple[str, Mapping[str, Any], float | None]], *,
                        replace: bool = False) -> int:
        """Write (key, value, expires_at) entries as one batch, all or nothing (one Lua
        script), each keeping its absolute expiry (unix seconds, ``None``: none), written
        with ``PXAT`` (to the nearest millisecond, Redis's unit).  Entries whose expiry
        has passed by the server's clock are skipped.
        Without *replace*, a stored key refuses the whole batch.  Returns the number
        written.  What ``mmapkv copy`` writes with.

        :raises KeyExistsError: a key is stored (without *replace*), or given twice.
        :raises InvalidTTLError: an ``expires_at`` is not unix seconds before the year
            2386 (it may be more than ``MAX_TTL`` ahead: another clock set it).
        """
        codec.check_flag(replace, "replace")
        checked = codec.expiring_entries(entries, self._now)
        args: list[Any] = ["overwrite" if replace else "check"]
        for _, _, data, _, expires in checked:
            args += [data, "", ""] if not expires else [data, "PXAT", round(expires * 1000)]
        self._write_batch(checked, args)
        return len(checked)

    def _write_batch(self, checked: list[tuple[str, bytes, bytes, int, Any]], args: list[Any]) -> None:
        """Run ``_WRITE_BATCH`` for checked (key, key bytes, ...) items: with "check", a
        stored key refuses the whole batch (``KeyExistsError``), also when the server,
        at its maxmemory, refused it for room first, as ``Store`` says it.  An empty batch
        sends nothing (a closed store still refuses it)."""
        names = [self._prefix + kb for _, kb, _, _, _ in checked]
        try:
            with self._server() as r:
                if not checked:
                    return
                found = int(self._eval(r, _WRITE_BATCH, names, args))
        except StoreFullError:
            found = self._first_stored(names) if args[0] == "check" else 0
            if not found:
                raise
        if found:
            raise KeyExistsError(f"key {str.__repr__(checked[found - 1][0])} already exists in {self._where}")

    def set(self, key: str, value: Mapping[str, Any], ttl: int | None = None) -> None:
        """Store *value* under *key* whether or not it is there; *ttl* replaces the key's
        TTL (``None``: it never expires).  ``SET [EX ttl]``: atomic, old or new value."""
        name = self._name(key)
        data, _ = codec.encode(value)
        ttl = codec.check_ttl(ttl)
        with self._server() as r:
            r.set(name, data, ex=ttl)

    __setitem__ = set

    def replace(self, key: str, value: Mapping[str, Any], ttl: Any = _KEEP) -> None:
        """Like :meth:`set`, but only for a stored *key*; it keeps its TTL unless *ttl* is
        given (``None`` removes it).  ``SET XX KEEPTTL`` (or ``XX EX ttl``, ``XX``).

        :raises KeyNotFoundError: *key* is not stored, or expired.
        """
        name = self._name(key)
        data, _ = codec.encode(value)
        if ttl is not _KEEP and ttl is not None:
            ttl = codec.check_ttl(ttl)
        try:
            with self._server() as r:
                if ttl is _KEEP:
                    done = r.set(name, data, xx=True, keepttl=True)
                else:
                    done = r.set(name, data, xx=True, ex=ttl)
        except StoreFullError:  # refused before it looked: a missing key is the first answer
            if self._first_stored([name]):
                raise
            done = False
        if not done:
            raise self._missing(key)

    def expire(self, key: str, ttl: int) -> None:
        """Make *key* expire *ttl* seconds from now, whatever TTL it had (``EXPIRE``).

        :raises KeyNotFoundError: *key* is not stored, or expired.
        :raises InvalidTTLError: *ttl* is not a whole number of seconds from 1.
        """
        ttl = codec.check_ttl(ttl, required=True)  # type: ignore[assignment]  # never None here
        name = self._name(key)
        with self._server() as r:
            done = r.expire(name, ttl)
        if not done:
            raise self._missing(key)

    def persist(self, key: str) -> bool:
        """Remove *key*'s TTL.  True if it had one (a script: ``EXISTS`` then ``PERSIST``).

        :raises KeyNotFoundError: *key* is not stored, or expired.
        """
        name = self._name(key)
        with self._server() as r:
            had = self._eval(r, _PERSIST, [name], [])
        if had == -1:
            raise self._missing(key)
        return bool(had)

    # ----------------------------------------------------------------- the mapping

    @overload
    def pop(self, key: str) -> dict[str, Any]: ...
    @overload
    def pop(self, key: str, default: dict[str, Any]) -> dict[str, Any]: ...
    @overload
    def pop(self, key: str, default: _T) -> dict[str, Any] | _T: ...

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove *key* and return its value (``GETDEL``: read and delete at once);
        *default* (if given) for a missing or expired key."""
        name = self._name(key)
        value = self._take(name, key)
        if value is _MISSING:
            if default is _MISSING:
                raise self._missing(key)
            return default
        return value

    def popitem(self) -> tuple[str, dict[str, Any]]:
        """Remove and return some (key, value) pair (``SCAN``, then ``pop`` until one is
        still there); ``KeyError`` when the namespace is empty."""
        for batch in self._batches(None):
            for key, name in batch:
                value = self._take(name, key)
                if value is not _MISSING:  # another client may have taken it meanwhile
                    return key, value
        raise KeyNotFoundError(f"popitem(): {self._where} is empty")

    def _take(self, name: bytes, key: str) -> Any:
        """Delete *name* and return its value (``_MISSING`` if it is not stored).  A value
        that does not decode raises ``CorruptStoreError`` and is put back, with its expiry,
        unless another client wrote the key meanwhile: for that instant other clients see
        the key missing."""
        with self._server() as r:
            taken = self._eval(r, _TAKE, [name], [])
        if taken is None:
            return _MISSING
        raw, expiry = taken
        try:
            return self._decode(raw, key)
        except CorruptStoreError:
            with self._server() as r:
                self._eval(r, _PUT_BACK, [name], [raw, expiry])
            raise

    def setdefault(self, key: str, default: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The value of *key*; if missing or expired, store *default* first and return it
        (``SET NX GET``: one atomic command).  As with ``dict``, *default* counts only
        then: for a stored key it may be left out, or be no value to store (a ``GET``)."""
        name = self._name(key)
        try:
            if default is None:
                raise InvalidValueError("setdefault() needs a default value: a store holds JSON objects only")
            data, _ = codec.encode(default)
        except InvalidValueError:
            with self._server() as r:
                raw = r.get(name)
            if raw is None:
                raise
            return self._decode(raw, key)
        try:
            with self._server() as r:
                old = r.set(name, data, nx=True, get=True)
        except StoreFullError:  # refused before it looked: a stored key's value still reads
            with self._server() as r:
                old = r.get(name)
            if old is None:
                raise
        return self._decode(data if old is None else old, key)

    def update(self, other: Any = (), /, **kwargs: dict[str, Any]) -> None:
        """Set many keys at once, overwriting (no TTL, as :meth:`set` without one): every
        pair is checked first, then all are sent in one ``MULTI``/``EXEC`` transaction, so
        no other client sees part of them.  *other* is what ``dict.update`` takes."""
        checked = codec.update_pairs(other, kwargs)
        with self._server() as r:
            if not checked:
                return
            pipe = r.pipeline(transaction=True)
            for _, kb, data, _ in checked:
                pipe.set(self._prefix + kb, data)
            pipe.execute()

    def clear(self) -> None:
        """Remove every key of the namespace: ``SCAN`` and ``UNLINK``, a batch at a time.

        Not atomic, unlike ``Store.clear``: a key another client writes meanwhile may
        survive, and another reader may see the namespace half cleared.
        """
        for batch in self._scan(every_type=True):
            with self._server() as r:
                r.unlink(*[name for _, name in batch])
