"""Gradio sessions that copy a component's settings only when the session changes them.

Gradio (6.31, pinned in requirements.txt) gives every visitor a `SessionState` that, at once, copies
the settings of every block in the app: 234 blocks here, about 1,200 Python objects and 10.7 ms per
visitor. The copy exists for one thing, the `/gradio_api/deep_link` route, which this app does not offer;
Gradio itself fills any setting it finds missing when a handler updates a component. The cost showed in
the garbage collector: with `SESSIONS_KEPT` sessions it walked a few hundred thousand such objects, and
as each new session dropped an old one Python's allocation count stood still, so the young generation
grew unwalked between collections. Collections of 0.07-0.19 s held refusals past 100 ms in
`benchmarks/fuzz_api.py` (README, "Hostile calls").

`use_light_sessions()` makes the copy lazy: a session copies a block's settings when a handler first
changes that block, and the rest when a deep link asks for them, so what a deep link stores is
unchanged.
"""

from __future__ import annotations

import os
from copy import copy

from gradio.state_holder import SessionState

_GRADIO_INIT = SessionState.__init__
_GRADIO_COMPONENTS = SessionState.components


def _light_init(self: SessionState, blocks) -> None:
    """Gradio's `SessionState.__init__` without the eager copy of every block's settings."""
    self.blocks_config = copy(blocks.default_config)
    self._copied_from = blocks  # the blocks whose settings a deep link lists (Gradio's `if k in blocks.blocks`)
    self.config_values = {}
    self.state_data = {}
    self._state_ttl = {}
    self.is_closed = False
    self.STATE_TTL_WHEN_CLOSED = 1 if os.getenv("GRADIO_IS_E2E_TEST", None) else 3600


def _all_components(self: SessionState):
    """Every block's settings, as Gradio's eager copy would hold them, then Gradio's own listing."""
    for key, block in self.blocks_config.blocks.items():
        if key not in self.config_values and key in self._copied_from.blocks:
            self.config_values[key] = self.blocks_config.config_for_block(key, [], block)
    return _GRADIO_COMPONENTS.fget(self)


def use_light_sessions() -> None:
    """Make every Gradio session in this process copy settings lazily (idempotent)."""
    SessionState.__init__ = _light_init
    SessionState.components = property(_all_components)
