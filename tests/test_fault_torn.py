"""Record writes cut short mid-copy: recovery keeps the state before the call or after it.

A kill -9 can land in the middle of the one copy that writes a record (between two pages,
the second of which faults), leaving some of the new record's bytes and, for the rest,
whatever the sub-slot held: often a record freed earlier, whose bytes are still there.
These tests build exactly those files: right after a record is written, the file is copied
and part of the copy is put back to the sub-slot's old bytes (the new bytes before a cut,
the old ones after it; or the other way round, as a copy that stores its first bytes last
would leave it).  Recovered, each copy must hold the acknowledged state before the call or,
when the cut left the whole new record, the state after it: never a freed record back.

``MMAPKV_TORN_WALKS`` sets the number of seeded walks (default 6).
"""

from __future__ import annotations

import os
import random
import shutil
from typing import Any

import pytest

import mmapkv
from mmapkv import engine as eng
from mmapkv.format import KEY_OFFSET, STATE_LIVE, STATE_PENDING

from conftest import SMALL_MAX_SIZE
from fault_child import make_value
from test_crash_sequences import crash

WALKS = int(os.environ.get("MMAPKV_TORN_WALKS", "6"))

Model = dict[str, tuple[int, int]]  # key -> (nonce, size)


@pytest.mark.parametrize("state", [STATE_LIVE, STATE_PENDING])
def test_a_new_state_word_alone_does_not_revive_the_freed_record(tmp_path: Any, state: int) -> None:
    """The shortest cut: the new record's state word, and nothing else, is in the file.
    The bytes behind it are a deleted record's, intact: they must stay deleted (PEND
    included: the deleted record came from the last committed batch, whose number a
    PEND record is kept with)."""
    path = os.path.join(tmp_path, "s.mmapkv")
    store = mmapkv.Store(path)
    store.create("kept", {"n": 0})
    store.batch_create({"gone": {"n": 1}})
    engine = store._engine
    assert engine is not None
    kb = b"gone"
    off = engine.record_offset(engine.find(kb, engine.fingerprint(kb)))
    store.delete("gone")
    image = crash(store, path + ".torn")
    with open(image, "r+b") as f:
        f.seek(off)
        f.write(state.to_bytes(4, "little"))  # what a write into the freed sub-slot did first
    with mmapkv.Store(image) as store:
        assert store.keys() == ["kept"]
        assert store.verify() == []


def test_a_copy_recovery_freed_stays_freed(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery frees the older of two copies of a key (a crash inside a ``set``, between
    switching the entry and freeing the old record) the way a delete does: after the key
    is deleted, a new state word over the older copy's bytes does not bring it back."""
    path = os.path.join(tmp_path, "s.mmapkv")
    store = mmapkv.Store(path)
    store.create("kept", {"n": 0})  # keeps the slot a record slot once "k" is gone
    store.set("k", {"v": 1})
    engine = store._engine
    assert engine is not None
    older = engine.record_offset(engine.find(b"k", engine.fingerprint(b"k")))

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt  # the process ends here: the old copy is still LIVE

    monkeypatch.setattr(eng.Engine, "_free_record", killed)
    with pytest.raises(KeyboardInterrupt):
        store.set("k", {"v": 2})
    monkeypatch.undo()
    image = crash(store, path + ".1")
    store = mmapkv.Store(image)  # recovery: two LIVE copies, the newer one wins
    assert store.read("k") == {"v": 2}
    store.delete("k")
    image = crash(store, path + ".2")
    with open(image, "r+b") as f:
        f.seek(older)
        f.write(STATE_LIVE.to_bytes(4, "little"))  # a write into that sub-slot, cut short
    with mmapkv.Store(image) as store:
        assert store.keys() == ["kept"]
        assert store.verify() == []


class TornImages:
    """Wraps ``Engine._write_at``: after each record write, a copy of the file with the
    write cut at a random byte (kept for checking once the call returns)."""

    def __init__(self, path: str, rng: random.Random) -> None:
        self.path, self.rng = path, rng
        self.images: list[tuple[str, str]] = []
        self.armed = False
        self.real = eng.Engine._write_at

    def __call__(self, engine: Any, off: int, key: bytes, data: bytes, *args: Any) -> int:
        if not self.armed:
            return self.real(engine, off, key, data, *args)  # type: ignore[no-any-return]
        size = KEY_OFFSET + len(key) + len(data)
        old = bytes(engine._mm[off:off + size])
        result = self.real(engine, off, key, data, *args)
        image = f"{self.path}.torn{len(self.images)}"
        shutil.copyfile(self.path, image)
        cut = self.rng.choice([self.rng.randrange(1, 17), self.rng.randrange(1, size)])
        with open(image, "r+b") as f:
            if self.rng.random() < 0.7:  # new bytes up to the cut, old ones after it
                f.seek(off + cut)
                f.write(old[cut:])
                how = f"new bytes [0, {cut}) of {size}"
            else:  # the first bytes stored last
                f.seek(off)
                f.write(old[:cut])
                how = f"new bytes [{cut}, {size})"
        self.images.append((image, how))
        return result  # type: ignore[no-any-return]


def recovered(image: str) -> tuple[dict[str, Any], list[str]]:
    with mmapkv.Store(image) as store:
        return {key: store.read(key) for key in store.keys()}, store.verify()


def matches(found: dict[str, Any], model: Model) -> bool:
    return found.keys() == model.keys() and all(
        found[key] == make_value(key, *model[key]) for key in model)


@pytest.mark.parametrize("seed", range(WALKS))
def test_a_torn_record_write_leaves_before_or_after(tmp_path: Any, seed: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Creates, overwrites, deletes, batches and updates, small values and whole slots,
    on a small store that grows to its ceiling and fills; the sub-slots are reused over
    and over, so most cuts fall over a freed record's bytes."""
    rng = random.Random(seed)
    path = os.path.join(tmp_path, "s.mmapkv")
    torn = TornImages(path, random.Random(seed + 1))

    def write_at(engine: Any, *args: Any) -> int:  # a function: a method once on the class
        return torn(engine, *args)

    monkeypatch.setattr(eng.Engine, "_write_at", write_at)
    store = mmapkv.Store(path, max_size=SMALL_MAX_SIZE)
    model: Model = {}
    counter = 0
    checked = revived_checks = 0
    freed = 0  # records freed so far (deleted or replaced): bytes a cut could revive
    wrote = wrote_after_free = 0  # calls that wrote a record (each must leave an image)

    def new_item() -> tuple[str, int, int]:
        nonlocal counter
        counter += 1
        size = rng.choice([rng.randint(120, 600), rng.randint(8000, 16384), 16384])
        return rng.choice(["k", "ключ", "🔑"]) + str(counter), rng.randrange(10 ** 9), size

    try:
        for step in range(120):
            before, names, freed_before = dict(model), sorted(model), freed
            roll = rng.random()
            deleting = bool(names) and roll < 0.3  # the one call that writes no record
            torn.armed = True
            try:
                if deleting:
                    key = rng.choice(names)
                    store.delete(key)
                    del model[key]
                    freed += 1
                elif names and roll < 0.45:
                    key, (_, nonce, size) = rng.choice(names), new_item()
                    store.set(key, make_value(key, nonce, size))
                    model[key] = (nonce, size)
                    freed += 1
                elif roll < 0.75:
                    key, nonce, size = new_item()
                    store.create(key, make_value(key, nonce, size))
                    model[key] = (nonce, size)
                else:
                    items = [new_item() for _ in range(rng.randint(1, 3))]
                    items += [(key, *new_item()[1:]) for key in rng.sample(names, min(len(names), 1))]
                    store.update({key: make_value(key, nonce, size) for key, nonce, size in items})
                    model.update({key: (nonce, size) for key, nonce, size in items})
                    freed += min(len(names), 1)  # the existing key's old record
                if not deleting:
                    wrote += 1
                    wrote_after_free += freed_before > 0
            except mmapkv.StoreFullError:
                pass
            finally:
                torn.armed = False
            for image, how in torn.images:
                found, problems = recovered(image)
                os.unlink(image)
                assert problems == [], f"seed {seed} step {step}, {how}: {problems}"
                assert matches(found, before) or matches(found, model), (
                    f"seed {seed} step {step}, {how}: recovered neither the state before the call "
                    f"nor after it: extra {sorted(found.keys() - before.keys() - model.keys())}, "
                    f"missing {sorted((before.keys() & model.keys()) - found.keys())}")
                checked += 1
                revived_checks += freed_before > 0
            torn.images.clear()
    finally:
        store.close()
    # Every call that wrote a record left at least one cut copy (the wrapper saw its writes),
    # and some came after a delete or an overwrite: freed bytes a cut could revive.  Counts
    # of the walk's own calls, not thresholds, so no seed fails them by chance.
    assert checked >= wrote > 0
    assert revived_checks >= wrote_after_free > 0
