"""docs/scaling.md's session runs against a real redis-server and prints what the page shows.

The page calls the server ``localhost:6379``; the session runs against the test session's
server instead (skipped without one), in a fresh directory the page calls
``/tmp/scaling-session``.  ``MMAPKV_UPDATE_DOCS=1`` rewrites outputs that differ, as for
docs/cli.md (tests/test_cli_doc.py, whose runner this is).
"""

from __future__ import annotations

from pathlib import Path

import mmapkv
from mmapkv.redis_server import LocalRedis
from test_cli_doc import BLOCK, examples, render, run_page

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"
NAMESPACES = ("app", "mmapkv")  # the ones the page writes to


def test_every_block_parses_back_to_itself() -> None:
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, f"{DOC} lost its console examples"
    for block in blocks:
        assert render(examples(block)) == block


def test_the_session_prints_what_the_page_shows(tmp_path: Path, redis_server: LocalRedis) -> None:
    def clear() -> None:
        for namespace in NAMESPACES:
            with mmapkv.RedisStore(redis_server.url, namespace=namespace) as store:
                store.clear()

    clear()
    try:
        run_page(DOC, tmp_path, "/tmp/scaling-session",
                 aliases={"localhost:6379": f"127.0.0.1:{redis_server.port}"})
    finally:
        clear()
