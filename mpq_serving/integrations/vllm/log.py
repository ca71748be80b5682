"""Our messages in vLLM's log: a logger under the `vllm` namespace gets vLLM's handler and format."""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm.mpq")
_SAID: set[str] = set()


def once(key: str, message: str, *args: object) -> None:
    """INFO `message` the first time `key` is seen in this process."""
    if key not in _SAID:
        _SAID.add(key)
        logger.info(message, *args)
