"""The policy decision point: `authorize` on the hot path, `explain` and `who_can` for people.

Default deny; an explicit deny wins over any allow. Each thing gets a cache entry (bounded; the
least recently used goes first, approximated by CLOCK) that points at a compiled matcher shared by
every thing with the same documents (see `_compile`). `replace_world` swaps in a new world and an
empty cache in one assignment, which is safe while an asyncio loop keeps deciding on another thread.
"""

from __future__ import annotations

import logging

from thingward.broker.base import Action
from thingward.policy._compile import CLIENT_ID, FILTER_WITH_DENIES, size_ok, subscribe_denied
from thingward.policy._state import WorldState
from thingward.policy.explain import Explanation, explain_decision
from thingward.policy.topics import MAX_TOPIC_BYTES
from thingward.policy.whocan import WhoCan, who_can
from thingward.policy.world import PolicyWorld

__all__ = ["DEFAULT_CACHE_SIZE", "PolicyEngine"]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 131_072


class PolicyEngine:
    """Decides what each thing may do, from an immutable `PolicyWorld`. Satisfies `broker.base.Authorizer`."""

    def __init__(self, world: PolicyWorld | None = None, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._cache_size = cache_size
        self._state = WorldState(world if world is not None else PolicyWorld(), cache_size)

    @property
    def world(self) -> PolicyWorld:
        return self._state.world

    @property
    def cached_things(self) -> int:
        """How many things have a compiled matcher in the cache."""
        return len(self._state.cache)

    @property
    def compiled_templates(self) -> int:
        """How many compiled matchers the cached things share (one per distinct set of documents)."""
        return self._state.template_count

    def replace_world(self, world: PolicyWorld) -> None:
        """Decide from `world` from now on; every cached matcher is dropped."""
        self._state = WorldState(world, self._cache_size)

    def invalidate(self, thing: str) -> None:
        """Drop `thing`'s cached matcher; it is rebuilt from the current world on its next decision."""
        state = self._state
        with state.lock:
            state.cache.pop(thing, None)

    def authorize(self, thing: str, action: Action, topic: str) -> bool:
        """True only if `thing` may do `action` on `topic` (for connect, `topic` is the client id)."""
        # The hot path: everything inline, no helper calls on a cache hit with an ASCII topic.
        try:
            state = self._state
            cache = state.cache
            entry = cache.get(thing)
            if entry is None:
                entry = state.entry(thing)
                if entry is None:
                    return False
            else:
                entry.hot = True  # for the CLOCK eviction in WorldState
            plan = entry.plans.get(action)
            if plan is None:
                plan = entry.template.plan(action)
            kind, match = plan  # a DENY_ALL plan's match never matches
            if not topic or ((len(topic) > MAX_TOPIC_BYTES or not topic.isascii()) and not size_ok(topic)):
                return False
            if kind == CLIENT_ID and "/" in topic:
                return False
            if match(entry.prefix + topic) is None:
                return False
            return kind != FILTER_WITH_DENIES or not subscribe_denied(entry, topic)
        except Exception:
            # A bug must not open a door: log it and deny.
            logger.exception("policy decision failed for thing %r action %r; denying", thing, action)
            return False

    def explain(self, thing: str, action: Action | str, topic: str) -> Explanation:
        """The decision for `thing` with a one-sentence reason and every statement that matched."""
        state = self._state
        facts = state.world.things.get(thing)
        attachments = state.attachments(facts) if facts is not None else ()
        return explain_decision(facts, attachments, thing, action, topic)

    def who_can(self, action: Action | str, topic: str) -> WhoCan:
        """Every thing that may do `action` on `topic`, with the statements that grant it."""
        return who_can(self._state, action, topic)
