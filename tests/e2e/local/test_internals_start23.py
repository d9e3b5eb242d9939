"""The fence of the start path's reliance on Prefect's block internals
(:mod:`flowrig.internals.prefect_blocks`), checked on the locked versions.

Each probe runs in a fresh interpreter: whether a collection was imported is a fact
about ``sys.modules``, which one test's imports would spoil for the next.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, sys
    import prefect.results
    from prefect.filesystems import LocalFileSystem

    store = prefect.results.ResultStore(result_storage=LocalFileSystem(basepath="/tmp/flowrig-probe"))
    shipped = {"result_store": store.model_dump(exclude_unset=True, context={"include_secrets": True})}
    collections = ("prefect_aws", "prefect_docker")
    out = {"slug": shipped["result_store"]["result_storage"].get("block_type_slug")}
    if sys.argv[1] == "flowrig":
        from flowrig.internals.prefect_blocks import with_known_blocks

        built = prefect.results.ResultStore.model_validate(with_known_blocks(shipped)["result_store"])
        out["imported"] = [name for name in collections if name in sys.modules]
        prefects = prefect.results.ResultStore.model_validate(shipped["result_store"])
        mine, theirs = built.result_storage, prefects.result_storage
        out["same"] = [type(mine) is type(theirs), built == prefects, mine.model_fields_set == theirs.model_fields_set,
                       mine.__pydantic_extra__ == theirs.__pydantic_extra__, built.model_dump() == prefects.model_dump()]
    else:
        prefect.results.ResultStore.model_validate(shipped["result_store"])
        out["imported"] = [name for name in collections if name in sys.modules]
    print(json.dumps(out))
    """
)


def _probe(side: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, side], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_prefect_imports_every_collection_to_validate_a_shipped_storage_block():
    # Why the helper exists: a worker validating the runner's serialized result store
    # imports prefect-aws and prefect-docker. When this stops holding, the helper can go.
    out = _probe("prefect")
    assert out["slug"] == "local-file-system"
    assert out["imported"] == ["prefect_aws", "prefect_docker"], out


def test_a_known_block_is_built_as_prefect_builds_it_without_the_collections():
    out = _probe("flowrig")
    assert out["imported"] == [], out
    assert out["same"] == [True] * 5, out


def test_an_unknown_or_missing_slug_is_left_to_prefect():
    from flowrig.internals.prefect_blocks import with_known_blocks

    shipped = {"a": [{"block_type_slug": "no-such-block-type", "x": 1}], "b": {"block_type_slug": 3}, "c": 1}
    assert with_known_blocks(shipped) is shipped
