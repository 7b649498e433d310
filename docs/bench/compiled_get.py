"""What a read would cost with its lookup compiled: the bound issue 13's read goals meet.

``python docs/bench/compiled_get.py [100B|1KiB|10KiB]`` builds, with the system's C compiler,
a throwaway extension that does what ``Engine.get`` does (the directory, the Robin Hood probe,
the record header, the key compare, the checksum through xxhash's own function, the value's
view) and nothing else; mmapkv does not ship it. It then times, interleaved in chunks of 250
calls with the order rotating, 20,000 hits and 20,000 misses of a 50,000-key store through:

- ``mmapkv``: ``Store.get``;
- ``mmapkv, get in C``: ``Store.get``'s lock-free path in Python (key check and encode, xxh3,
  the seqlock's generation reads, decode) around the compiled lookup;
- ``py-lmdb``: a read transaction per call at ``writemap=True``, as the benchmark's peer.

It prints the medians and their ratios to py-lmdb's. The constants of the format are passed
to the compiler from ``mmapkv.format`` and ``mmapkv.table``, and every sampled key must read
the same through all three before anything is timed.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lmdb
import orjson
from xxhash import xxh3_64_intdigest

from mmapkv import Store
from mmapkv import format as F
from mmapkv import table as T
from mmapkv.bench.workloads import make_pool

SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* get(map, dir_offset, q0, dmask, slot_count, slots_offset, key, fp, xxh3)
   -> None | (value view, flags, expires); ValueError for a damaged entry */
static PyObject *get(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) { PyErr_SetString(PyExc_TypeError, "get takes 9 arguments"); return NULL; }
    Py_buffer mb;
    if (PyObject_GetBuffer(args[0], &mb, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *m = mb.buf;
    Py_ssize_t len = mb.len;
    Py_ssize_t dir_offset = PyLong_AsSsize_t(args[1]), q0 = PyLong_AsSsize_t(args[2]);
    uint64_t dmask = PyLong_AsUnsignedLongLong(args[3]);
    Py_ssize_t slot_count = PyLong_AsSsize_t(args[4]), slots_offset = PyLong_AsSsize_t(args[5]);
    char *key; Py_ssize_t key_len;
    uint64_t fp = PyLong_AsUnsignedLongLong(args[7]);
    if (PyErr_Occurred() || PyBytes_AsStringAndSize(args[6], &key, &key_len) < 0) goto error;
    uint16_t segment;
    Py_ssize_t at = dir_offset + 2 * (Py_ssize_t)(fp & dmask);
    if (at + 2 > len) goto damaged;
    memcpy(&segment, m + at, 2);
    if (segment >= slot_count) goto damaged;
    Py_ssize_t base = q0 + (Py_ssize_t)segment * SEGMENT_STRIDE;
    uint64_t i = (fp >> HOME_SHIFT) & SEGMENT_MASK, distance = 0;
    for (;;) {
        uint64_t entry;
        at = (base + (Py_ssize_t)i) * 8;
        if (at + 8 > len) goto damaged;
        memcpy(&entry, m + at, 8);
        if (!entry) break;
        if ((entry >> FINGERPRINT_SHIFT) == fp) {
            Py_ssize_t off = slots_offset + (Py_ssize_t)((entry & UNIT_MASK) - 1) * UNIT;
            if (off < 0 || off + KEY_OFFSET > len) goto damaged;
            uint32_t state; uint64_t checksum; double expires; uint16_t vlen;
            memcpy(&state, m + off, 4); memcpy(&checksum, m + off + 8, 8);
            memcpy(&expires, m + off + 24, 8); memcpy(&vlen, m + off + 32, 2);
            uint8_t klen = m[off + 34], flags = m[off + 35];
            if (klen == key_len && off + KEY_OFFSET + klen <= len &&
                    memcmp(m + off + KEY_OFFSET, key, klen) == 0) {
                Py_ssize_t end = off + KEY_OFFSET + klen + vlen;
                if (state != STATE_LIVE || vlen > MAX_VALUE_BYTES || end > len) goto damaged;
                PyBuffer_Release(&mb);
                PyObject *body = PySequence_GetSlice(args[0], off + BODY_OFFSET, end);
                PyObject *where = PyLong_FromSsize_t(off);
                PyObject *call[2] = {body, where};
                PyObject *digest = body && where ? PyObject_Vectorcall(args[8], call, 2, NULL) : NULL;
                Py_XDECREF(body); Py_XDECREF(where);
                if (!digest) return NULL;
                uint64_t got = PyLong_AsUnsignedLongLong(digest);
                Py_DECREF(digest);
                if (got != checksum) { PyErr_SetString(PyExc_ValueError, "checksum"); return NULL; }
                PyObject *value = PySequence_GetSlice(args[0], off + KEY_OFFSET + klen, end);
                return value ? Py_BuildValue("(Nid)", value, (int)flags, expires) : NULL;
            }
        }
        if (((i - (entry >> HOME_OF_ENTRY)) & SEGMENT_MASK) < distance) break;
        i = (i + 1) & SEGMENT_MASK;
        distance++;
    }
    PyBuffer_Release(&mb);
    Py_RETURN_NONE;
damaged:
    PyErr_SetString(PyExc_ValueError, "damaged entry");
error:
    PyBuffer_Release(&mb);
    return NULL;
}

static PyMethodDef methods[] = {{"get", (PyCFunction)(void (*)(void))get, METH_FASTCALL, NULL},
                                {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "compiled_get", NULL, -1, methods};
PyMODINIT_FUNC PyInit_compiled_get(void) { return PyModule_Create(&module); }
"""

#: the header fields the C reads at fixed offsets: checked against the format here
assert F.RECORD_HEADER.format == "<IIQQdHBB" and F.KEY_OFFSET == 36


def build(where: str) -> Any:
    """Compile SOURCE into *where* and import it."""
    constants = {name: getattr(F, name) for name in (
        "FINGERPRINT_SHIFT", "HOME_SHIFT", "UNIT_MASK", "UNIT", "KEY_OFFSET", "BODY_OFFSET",
        "STATE_LIVE", "MAX_VALUE_BYTES")}
    constants.update({name: getattr(T, name) for name in (
        "SEGMENT_STRIDE", "SEGMENT_MASK", "HOME_OF_ENTRY")})
    source = os.path.join(where, "compiled_get.c")
    with open(source, "w") as f:
        f.write("".join(f"#define {k} {v}ULL\n" for k, v in constants.items()) + SOURCE)
    target = os.path.join(where, "compiled_get" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC",
                    "-I" + sysconfig.get_paths()["include"], source, "-o", target], check=True)
    spec = importlib.util.spec_from_file_location("compiled_get", target)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(size: str = "1KiB", n: int = 50_000, calls: int = 20_000, rounds: int = 5) -> None:
    where = tempfile.mkdtemp()
    try:
        compiled = build(where)
        pool = make_pool(size, 1)
        store = Store(os.path.join(where, "store.mmapkv"))
        env = lmdb.open(os.path.join(where, "lmdb"), map_size=1 << 30, sync=False,
                        metasync=False, writemap=True)
        for i in range(n):
            store.create(f"user:{i:08d}", pool[i % len(pool)])
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(f"user:{i:08d}".encode(), orjson.dumps(pool[i % len(pool)]))
        engine = store._engine
        assert engine is not None
        table = engine.table
        lookup, loads, shift = compiled.get, orjson.loads, F.FINGERPRINT_SHIFT

        def get_in_c(key: str, default: Any = None) -> Any:
            if type(key) is not str or not 0 < len(key) <= 32:
                raise TypeError(key)
            kb = key.encode()
            fp = xxh3_64_intdigest(kb, store._seed) >> shift
            if not engine.changes:
                generation = engine.generation
                found = lookup(engine._view, engine.geometry.dir_offset, table.q0, table.dmask,
                               engine.slot_count, engine._slots_offset, kb, fp, xxh3_64_intdigest)
                value = default if found is None or (found[2] and store._clock() >= found[2]) \
                    else loads(found[0])
                if engine.generation == generation:
                    return value
            raise RuntimeError("a change ran: this sketch has no locked path")

        begin = env.begin

        def lmdb_get(key: str) -> Any:
            with begin() as txn:
                data = txn.get(key.encode())
            return None if data is None else loads(data)

        rng = random.Random(1)
        hits = [f"user:{i:08d}" for i in rng.sample(range(n), calls)]
        misses = [f"user:{n + i:08d}" for i in range(calls)]
        for key in hits[:500] + misses[:500]:
            assert store.get(key) == get_in_c(key) == lmdb_get(key), key
        stores: list[tuple[str, Callable[[str], Any]]] = [
            ("mmapkv", store.get), ("mmapkv, get in C", get_in_c), ("py-lmdb", lmdb_get)]
        samples: dict[tuple[str, str], list[int]] = {}
        perf = time.perf_counter_ns
        for _ in range(rounds):
            for kind, keys in (("hit", hits), ("miss", misses)):
                for chunk, start in enumerate(range(0, len(keys), 250)):
                    for name, get in stores[chunk % 3:] + stores[:chunk % 3]:
                        out = samples.setdefault((kind, name), []).append
                        for key in keys[start:start + 250]:
                            t0 = perf()
                            get(key)
                            out(perf() - t0)
        for kind in ("hit", "miss"):
            median = {name: statistics.median(samples[kind, name]) for name, _ in stores}
            peer = median["py-lmdb"]
            print(f"{size} read {kind}: " + ", ".join(
                f"{name} {t / 1000:.2f} us ({t / peer:.2f}x)" for name, t in median.items()))
        store.close()
        env.close()
    finally:
        shutil.rmtree(where)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "1KiB")
