"""The stores under test: one ``Adapter`` per store, each used the way its users would use it."""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .. import redis_server
from .workloads import _codecs

if TYPE_CHECKING:
    from ..redis_server import LocalRedis

__all__ = ["BenchError", "KeyExists", "Adapter", "ADAPTERS", "JSONFILE_MAX_N", "available",
           "MmapkvAdapter", "DictAdapter", "JsonFileAdapter", "LmdbAdapter", "LmdbWritemapAdapter",
           "DiskcacheAdapter", "SqlitedictAdapter", "DbmDumbAdapter", "RedisStoreAdapter", "stop_servers"]

JSONFILE_MAX_N = 1_000      # the naive JSON file is O(n) per call: only at small N
LMDB_MAP_SIZE = 1 << 33     # virtual only: lmdb's map is sparse


class BenchError(Exception):
    """A store misbehaved (a read returned the wrong value, a miss returned...)."""


class KeyExists(Exception):
    """Raised by the peers' ``create`` glue when the key is there already."""


def _files_usage(paths: Iterable[str]) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the files that exist among *paths*."""
    size = blocks = 0
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        size += st.st_size
        blocks += st.st_blocks * 512
    return size, blocks


def _dir_usage(path: str) -> tuple[int, int]:
    files = [os.path.join(root, f) for root, _, names in os.walk(path) for f in names]
    return _files_usage(files)


class Adapter:
    """One store under test, used the way its users would use it.

    Subclasses set the operation callables in ``open``: ``create(key, value)``,
    ``read(key) -> dict`` (``KeyError`` when missing), ``get(key)`` (``None`` when missing,
    the store's own no-exception lookup where it has one), ``delete(key)`` (``KeyError``
    when missing) and ``batch(pairs)`` (all or nothing).  ``fill`` and ``drop`` are the
    fastest untimed way to add or remove many keys, used only around sampled calls.
    """

    family = ""
    requires: tuple[str, ...] = ()
    codecs: tuple[str | None, ...] = (None,)
    persistent = True       # has an "open an existing store" step worth timing
    shared_reads = True     # its reads may run from several threads at once
    in_process = True       # its data lives in this process's memory (the memory table)
    caps: dict[str, int] = {}   # op -> most timed calls, for O(n)-per-call designs
    max_n: int | None = None

    create: Callable[[str, Any], None]
    read: Callable[[str], Any]
    delete: Callable[[str], None]
    batch: Callable[[list[tuple[str, Any]]], None]
    set: Callable[[str, Any], None]   #: store whether or not the key exists (an overwrite here)
    get: Callable[[str], Any]         #: the value, or None when missing

    def __init__(self, root: str, codec: str | None) -> None:
        self.codec = codec
        self.name = f"{self.family}[{codec}]" if codec else self.family
        self.root = root
        self.get = self._get_by_read  # until open sets the store's own
        self.place("create")
        if codec:
            self.encode, self.decode = _codecs()[codec]

    def place(self, phase: str) -> None:
        """Keep the store's files in a new directory from here on.

        Old files are not deleted mid-run: removing a big store file can stall the disk
        for seconds (on a ``discard`` mount, freeing mmapkv's many written/unwritten
        extents of a fallocated file is ~2 ms per slot), which would land in the
        timings of the next phase.  The whole tree goes at the end of the run.
        """
        self.dir = os.path.join(self.root, phase, self.name.replace("[", "-").replace("]", ""))
        os.makedirs(self.dir, exist_ok=True)

    @classmethod
    def missing(cls) -> str | None:
        """Why this store cannot run here (a peer not installed), or None."""
        for module in cls.requires:
            try:
                __import__(module)
            except ImportError as exc:
                return f"{module} is not installed ({exc}); pip install -e \".[bench]\""
        return None

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def destroy(self, phase: str) -> None:
        """Close, and start the next *phase* from nothing (a new directory)."""
        self.close()
        self.place(phase)

    def usage(self) -> tuple[int, int]:
        return _dir_usage(self.dir)

    def fill(self, pairs: list[tuple[str, Any]]) -> None:
        for k, v in pairs:
            self.create(k, v)

    def drop(self, keys: list[str]) -> None:
        for k in keys:
            self.delete(k)

    def _get_by_read(self, key: str) -> Any:
        """``get`` for a store without a lookup that answers a miss without an exception."""
        try:
            return self.read(key)
        except KeyError:
            return None


class MmapkvAdapter(Adapter):
    family = "mmapkv"

    def open(self) -> None:
        from .. import Store

        self.store = s = Store(os.path.join(self.dir, "store.mmapkv"))
        # The public methods themselves: no glue in the way.
        self.create, self.read, self.delete, self.batch = s.create, s.read, s.delete, s.batch_create
        self.set, self.get = s.set, s.get

    def close(self) -> None:
        self.store.close()

    def fill(self, pairs: list[tuple[str, Any]]) -> None:
        self.store.batch_create(pairs)


class DictAdapter(Adapter):
    """A plain ``dict``: the in-memory limit (no persistence, no copy on read)."""

    family = "dict"
    persistent = False

    def __init__(self, root: str, codec: str | None) -> None:
        super().__init__(root, codec)
        self.data: dict[str, Any] | None = None

    def open(self) -> None:
        if self.data is None:
            self.data = {}
        d = self.data

        def create(k: str, v: Any) -> None:
            if k in d:
                raise KeyExists(k)
            d[k] = v

        def delete(k: str) -> None:
            del d[k]

        def batch(pairs: list[tuple[str, Any]]) -> None:
            for k, _ in pairs:
                if k in d:
                    raise KeyExists(k)
            d.update(pairs)

        self.create, self.read, self.delete, self.batch = create, d.__getitem__, delete, batch
        self.set, self.get = d.__setitem__, d.get

    def close(self) -> None:
        pass

    def destroy(self, phase: str) -> None:
        self.data = None


class JsonFileAdapter(Adapter):
    """The naive design: load the whole JSON file, change it, rewrite it, every call."""

    family = "jsonfile"
    persistent = False  # nothing happens at "open": every call loads the file
    caps = {"create": 200, "read_hit": 200, "read_miss": 200, "delete": 200}
    max_n = JSONFILE_MAX_N
    shared_reads = False  # every read loads the whole file: nothing to learn from threads

    def open(self) -> None:
        path = self.path = os.path.join(self.dir, "store.json")
        if not os.path.exists(path):
            with open(path, "w", encoding="utf-8") as f:
                f.write("{}")

        def load() -> dict[str, Any]:
            with open(path, encoding="utf-8") as f:
                return json.load(f)  # type: ignore[no-any-return]

        def save(data: dict[str, Any]) -> None:
            # json.dumps, not json.dump: dump() runs the pure-Python encoder, ~5x slower,
            # and the comparison should not hinge on that pitfall.
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps(data))

        def create(k: str, v: Any) -> None:
            data = load()
            if k in data:
                raise KeyExists(k)
            data[k] = v
            save(data)

        def read(k: str) -> Any:
            return load()[k]

        def delete(k: str) -> None:
            data = load()
            del data[k]
            save(data)

        def batch(pairs: list[tuple[str, Any]]) -> None:
            data = load()
            for k, _ in pairs:
                if k in data:
                    raise KeyExists(k)
            data.update(pairs)
            save(data)

        def drop(keys: list[str]) -> None:
            data = load()
            for k in keys:
                del data[k]
            save(data)

        def set_(k: str, v: Any) -> None:
            data = load()
            data[k] = v
            save(data)

        self.create, self.read, self.delete, self.batch = create, read, delete, batch
        self.set = set_
        self.fill, self.drop = batch, drop  # type: ignore[method-assign]

    def close(self) -> None:
        pass


class LmdbAdapter(Adapter):
    """py-lmdb with ``sync=False``: one write transaction per create or delete, a read
    transaction per read, ``putmulti`` in one transaction for a batch."""

    family = "lmdb"
    requires = ("lmdb",)
    codecs: tuple[str, ...] = ("json", "mmapkv")
    options: dict[str, bool] = {"sync": False}

    def open(self) -> None:
        import lmdb

        self.env = env = lmdb.open(self.dir, map_size=LMDB_MAP_SIZE, **self.options)
        encode, decode, begin = self.encode, self.decode, env.begin

        def create(k: str, v: Any) -> None:
            with begin(write=True) as txn:
                if not txn.put(k.encode(), encode(v), overwrite=False):
                    raise KeyExists(k)

        def read(k: str) -> Any:
            with begin() as txn:
                data = txn.get(k.encode())
            if data is None:
                raise KeyError(k)
            return decode(data)

        def get(k: str) -> Any:
            with begin() as txn:
                data = txn.get(k.encode())
            return None if data is None else decode(data)

        def delete(k: str) -> None:
            with begin(write=True) as txn:
                if not txn.delete(k.encode()):
                    raise KeyError(k)

        def batch(pairs: list[tuple[str, Any]]) -> None:
            items = [(k.encode(), encode(v)) for k, v in pairs]
            with begin(write=True) as txn:
                _, added = txn.cursor().putmulti(items, overwrite=False)
                if added != len(items):
                    raise KeyExists("a key of the batch exists")  # aborts the transaction

        def set_(k: str, v: Any) -> None:  # put() overwrites by default
            with begin(write=True) as txn:
                txn.put(k.encode(), encode(v))

        self.create, self.read, self.delete, self.batch = create, read, delete, batch
        self.set, self.get = set_, get
        self.fill = batch  # type: ignore[method-assign]

    def close(self) -> None:
        self.env.close()


class LmdbWritemapAdapter(LmdbAdapter):
    """py-lmdb at its fastest safe setting (issue 13): ``writemap=True`` (writes go through
    a writable map, as mmapkv's deletes do), ``sync=False, metasync=False``."""

    family = "lmdb-writemap"
    codecs = ("mmapkv",)
    options = {"sync": False, "metasync": False, "writemap": True}


class DiskcacheAdapter(Adapter):
    """python-diskcache ``Cache`` with its defaults; ``add`` is its create-if-absent."""

    family = "diskcache"
    requires = ("diskcache",)
    codecs = ("json", "mmapkv", "pickle")

    def open(self) -> None:
        import diskcache

        self.cache = cache = diskcache.Cache(self.dir)
        add, getitem = cache.add, cache.__getitem__
        # "pickle" is diskcache's own default: hand it the dict and let it pickle.
        encode: Callable[[Any], Any] = (lambda v: v) if self.codec == "pickle" else self.encode

        if self.codec == "pickle":
            def create(k: str, v: Any) -> None:
                if not add(k, v):
                    raise KeyExists(k)
            read, get = getitem, cache.get
        else:
            decode, get_item = self.decode, cache.get

            def create(k: str, v: Any) -> None:
                if not add(k, encode(v)):
                    raise KeyExists(k)

            def read(k: str) -> Any:
                return decode(getitem(k))

            def get(k: str) -> Any:
                data = get_item(k)
                return None if data is None else decode(data)

        def add_all(pairs: list[tuple[str, Any]]) -> None:
            for k, v in pairs:
                if not add(k, encode(v)):
                    raise KeyExists(k)

        def batch(pairs: list[tuple[str, Any]]) -> None:
            with cache.transact():  # rolls back if we raise; the loop outside this frame
                add_all(pairs)      # (tests/test_backward_jumps.py)

        set_item = cache.set

        def set_(k: str, v: Any) -> None:  # its overwrite
            set_item(k, encode(v))

        self.create, self.read, self.delete, self.batch = create, read, cache.__delitem__, batch
        self.set, self.get = set_, get
        self.fill = batch  # type: ignore[method-assign]

    def close(self) -> None:
        self.cache.close()


class SqlitedictAdapter(Adapter):
    """sqlitedict with ``autocommit=True``; its own pickle, or our codec as encode/decode."""

    family = "sqlitedict"
    requires = ("sqlitedict",)
    codecs = ("json", "mmapkv", "pickle")

    def open(self) -> None:
        from sqlitedict import SqliteDict

        kwargs: dict[str, Any] = {}
        if self.codec != "pickle":
            kwargs = {"encode": self.encode, "decode": self.decode}
        self.db = db = SqliteDict(os.path.join(self.dir, "store.sqlite"), autocommit=True, **kwargs)
        contains, setitem = db.__contains__, db.__setitem__

        def create(k: str, v: Any) -> None:
            if contains(k):
                raise KeyExists(k)
            setitem(k, v)

        def batch(pairs: list[tuple[str, Any]]) -> None:
            for k, _ in pairs:
                if contains(k):
                    raise KeyExists(k)
            db.update(pairs)  # one executemany and one commit

        self.create, self.read, self.delete, self.batch = create, db.__getitem__, db.__delitem__, batch
        self.set, self.get = setitem, db.get
        self.fill = batch  # type: ignore[method-assign]

    def close(self) -> None:
        self.db.close()


class DbmDumbAdapter(Adapter):
    """``dbm.dumb``, what ``dbm``/``shelve`` fall back to.  Its delete rewrites the whole
    index file (O(n)), so deletes are sampled."""

    family = "dbm.dumb"
    codecs = ("json", "mmapkv")
    caps = {"delete": 200}
    shared_reads = False  # one file object, a seek then a read: not safe from two threads

    def open(self) -> None:
        import dbm.dumb

        self.db = db = dbm.dumb.open(os.path.join(self.dir, "store"), "c")
        encode, decode = self.encode, self.decode
        contains, setitem, getitem = db.__contains__, db.__setitem__, db.__getitem__

        def create(k: str, v: Any) -> None:
            if contains(k):
                raise KeyExists(k)
            setitem(k, encode(v))

        def read(k: str) -> Any:
            return decode(getitem(k))

        def batch(pairs: list[tuple[str, Any]]) -> None:  # no bulk API: a loop
            for k, _ in pairs:
                if contains(k):
                    raise KeyExists(k)
            for k, v in pairs:
                setitem(k, encode(v))

        def set_(k: str, v: Any) -> None:
            setitem(k, encode(v))

        self.create, self.read, self.delete, self.batch = create, read, db.__delitem__, batch
        self.set = set_

    def drop(self, keys: list[str]) -> None:
        # Untimed bulk delete between sampled ones: what __delitem__ does, with one
        # rewrite of the index file instead of one per key.
        db = self.db
        for k in keys:
            del db._index[k.encode("utf-8")]  # type: ignore[attr-defined]
        db._modified = True  # type: ignore[attr-defined]
        db._commit()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.db.close()


_SERVERS: set[LocalRedis] = set()   # every redis-server a RedisStoreAdapter started


def stop_servers() -> None:
    """Stop every redis-server the benchmark started (the run's end, and at exit)."""
    while _SERVERS:
        _SERVERS.pop().stop()


class RedisStoreAdapter(Adapter):
    """``mmapkv.RedisStore`` on a ``redis-server`` of its own on loopback: the cost of
    moving to Redis (docs/scaling.md).  The server logs every write to its AOF with
    ``appendfsync everysec``, the setting closest to mmapkv's default (a change survives
    a crash of the process, not of the machine); every call is a network round trip.  Its
    memory is the server's, so it has no row in the memory table."""

    family = "redis"
    requires = ("redis",)
    in_process = False

    def __init__(self, root: str, codec: str | None) -> None:
        self.server: LocalRedis | None = None
        self.phase = 0
        super().__init__(root, codec)

    @classmethod
    def missing(cls) -> str | None:
        return redis_server.missing()

    def place(self, phase: str) -> None:
        super().place(phase)
        self.phase += 1
        self.namespace = f"bench-{phase}-{self.phase}"  # a phase starts from nothing

    def open(self) -> None:
        from .. import RedisStore

        if self.server is None:
            self.server = redis_server.LocalRedis(appendonly=True, appendfsync="everysec")
            _SERVERS.add(self.server)
            if len(_SERVERS) == 1:
                atexit.register(stop_servers)
            self.server.start()
        self.store = s = RedisStore(self.server.url, namespace=self.namespace)
        self.create, self.read, self.delete, self.batch = s.create, s.read, s.delete, s.batch_create
        self.set, self.get = s.set, s.get  # get: None for a miss, no exception (one GET)

    def close(self) -> None:
        self.store.close()

    def destroy(self, phase: str) -> None:
        if phase == "done" and self.server is not None:
            self.close()
            _SERVERS.discard(self.server)
            self.server.stop()
            self.server = None
            return
        self.store.clear()  # untimed: the server's memory is not the disk, give it back now
        self.close()
        self.place(phase)

    def usage(self) -> tuple[int, int]:
        return _dir_usage(self.server.directory) if self.server else (0, 0)

    def fill(self, pairs: list[tuple[str, Any]]) -> None:
        self.store.batch_create(pairs)


ADAPTERS: tuple[type[Adapter], ...] = (
    MmapkvAdapter, DictAdapter, LmdbAdapter, LmdbWritemapAdapter, DiskcacheAdapter, SqlitedictAdapter,
    DbmDumbAdapter, JsonFileAdapter, RedisStoreAdapter,
)


def available(families: Sequence[str] | None, notes: list[str]) -> list[type[Adapter]]:
    """The store classes to run: those asked for whose modules import."""
    out: list[type[Adapter]] = []
    for cls in ADAPTERS:
        if families and cls.family not in families:
            continue
        why = cls.missing()
        if why:
            notes.append(f"{cls.family} skipped: {why}")
            continue
        out.append(cls)
    return out
