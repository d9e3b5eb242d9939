"""Blocks in a shipped run context, built without importing every Prefect collection.

A worker rebuilds the flow run's context from the runner's ``serialize()``: its result
store holds the storage block as a dict with a ``block_type_slug``. Validating that
dict makes Prefect's ``Block.__new__`` look the slug up through
``get_block_class_from_key``, which first imports every installed collection
(``prefect.collections`` entry points): prefect-aws and prefect-docker with boto3,
aiobotocore and the docker SDK, one to two seconds of CPU in every worker process, at
its first task, for a ``local-file-system`` block whose class Prefect itself has
registered. Here a block whose slug is already registered is built the way
``Block.__new__`` and ``__init__`` build it, minus that import; any other slug is left
to Prefect, which then imports the collections as before.

Fenced here (tests/e2e/local/test_internals_start.py checks each):

- ``Block.__new__(cls, **kwargs)`` looking up ``kwargs["block_type_slug"]`` through
  ``get_block_class_from_key``, which loads every collection first;
- ``prefect.utilities.dispatch.lookup_type(Block, slug)`` being that lookup's registry,
  and ``__init__`` with the slug among the keywords building the same block.
"""

from __future__ import annotations

from typing import Any

SLUG = "block_type_slug"


def _known_block(data: dict[str, Any]) -> Any:
    """The block ``data`` describes when its type is registered already, else ``None``."""
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import lookup_type

    slug = data.get(SLUG)
    if not isinstance(slug, str):
        return None
    try:
        cls = lookup_type(Block, slug)
    except KeyError:
        return None
    # What type.__call__ does once Block.__new__ has found the class: __new__ without the
    # slug (so without the lookup), then __init__ with every keyword, the slug included.
    block = cls.__new__(cls)
    block.__init__(**data)
    return block


def with_known_blocks(value: Any) -> Any:
    """``value`` (a serialized context: dicts, lists, anything else) with each block of
    an already registered type built; a dict without one is copied only where a block
    below it was built."""
    if isinstance(value, dict):
        if SLUG in value:
            block = _known_block(value)
            if block is not None:
                return block
        items = {key: with_known_blocks(item) for key, item in value.items()}
        return items if any(items[key] is not value[key] for key in value) else value
    if isinstance(value, list):
        items_list = [with_known_blocks(item) for item in value]
        return items_list if any(a is not b for a, b in zip(items_list, value)) else value
    return value
