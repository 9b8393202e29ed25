"""One world and everything derived from it (internal): the thing cache, shared templates, indexes.

`PolicyEngine.replace_world` swaps one `WorldState` for a new one in a single assignment, so a
decision in flight finishes on the old world and the next one sees the new world; nothing derived
from an old world can leak into the new one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

from thingward.policy._compile import Entry, GroupSetInfo, Template, thing_value
from thingward.policy.document import PolicyDocument
from thingward.policy.topics import is_substitutable
from thingward.policy.world import Attachment, PolicyWorld, ThingFacts, group_chain, thing_attachments

__all__ = ["GroupSetKey", "WorldState"]

# (sorted groups, the thing's name when it has policies attached directly, else None)
GroupSetKey = tuple[tuple[str, ...], str | None]


class WorldState:
    """An immutable world with lazily built, cached derivations. Creation paths hold `lock`."""

    def __init__(self, world: PolicyWorld, cache_size: int) -> None:
        self.world = world
        self.cache_size = cache_size
        self.cache: OrderedDict[str, Entry] = OrderedDict()
        self.lock = threading.RLock()
        self._chains: dict[str, tuple[str, ...]] = {}
        self._group_sets: dict[GroupSetKey, GroupSetInfo] = {}
        self._doc_ids: dict[PolicyDocument, int] = {}
        self._policy_doc_ids: dict[str, int] = {}
        self._templates: dict[object, Template] = {}
        self._members: dict[GroupSetKey, list[str]] | None = None
        self._attr_index: dict[str, dict[str, list[str]]] = {}

    @property
    def template_count(self) -> int:
        return len(self._templates)

    def chain(self, group: str) -> tuple[str, ...]:
        chain = self._chains.get(group)
        if chain is None:
            chain = group_chain(self.world, group)
            self._chains[group] = chain
        return chain

    def group_set_key(self, facts: ThingFacts) -> GroupSetKey:
        direct = facts.name if self.world.thing_policies.get(facts.name) else None
        groups = facts.groups
        if len(groups) > 1:
            groups = tuple(sorted(set(groups)))
        return (groups, direct)

    def attachments(self, facts: ThingFacts) -> tuple[Attachment, ...]:
        return self.group_set_info(facts).attachments

    def doc_id(self, policy: str, document: PolicyDocument) -> int:
        known = self._policy_doc_ids.get(policy)
        if known is None:
            known = self._doc_ids.setdefault(document, len(self._doc_ids))
            self._policy_doc_ids[policy] = known
        return known

    def group_set_info(self, facts: ThingFacts) -> GroupSetInfo:
        key = self.group_set_key(facts)
        info = self._group_sets.get(key)
        if info is None:
            with self.lock:
                info = self._group_sets.get(key)
                if info is None:
                    chains = {group: self.chain(group) for group in key[0]}
                    attachments = thing_attachments(self.world, facts.name, key[0], chains)
                    info = GroupSetInfo.build(attachments, self.doc_id)
                    self._group_sets[key] = info
        return info

    def build_entry(self, facts: ThingFacts) -> Entry:
        """A new cache entry for `facts` (the template is shared and compiled once)."""
        info = self.group_set_info(facts)
        values: list[str] = []
        mask: list[bool] = []
        for key in info.thing_var_keys:
            value = thing_value(facts, key)
            usable = value is not None and is_substitutable(value)
            mask.append(usable)
            if usable and value is not None:
                values.append(value)
        template_key = (info.slots_key, info.thing_var_keys, tuple(mask))
        template = self._templates.get(template_key)
        if template is None:
            with self.lock:
                template = self._templates.get(template_key)
                if template is None:
                    template = Template(
                        [slot.document for slot in info.slots],
                        [usable for _doc, usable in info.slots_key],
                        info.thing_var_keys,
                        mask,
                    )
                    self._templates[template_key] = template
        prefix = "".join(value + "\x00" for value in values) + info.group_prefix
        return Entry(facts, info, template, prefix)

    def entry(self, thing: str) -> Entry | None:
        """The cached entry for `thing`, built and inserted (evicting the least recent) on a miss."""
        facts = self.world.things.get(thing)
        if facts is None:
            return None
        with self.lock:
            entry = self.cache.get(thing)
            if entry is None:
                entry = self.build_entry(facts)
                self._evict_for_one_more()
                self.cache[thing] = entry
        return entry

    def _evict_for_one_more(self) -> None:
        """Make room, least recently used first, approximated by CLOCK (second chance).

        A hit only sets `entry.hot`; moving the entry to the end of the order on every hit (exact
        LRU) would cost more random memory accesses than the rest of the decision. Eviction takes
        the oldest entry; a hot one is cooled and requeued instead, so each entry survives one
        full turn after its last use.
        """
        cache = self.cache
        while len(cache) >= self.cache_size:
            name, victim = cache.popitem(last=False)
            if victim.hot:
                victim.hot = False
                cache[name] = victim

    def members_by_group_set(self) -> Mapping[GroupSetKey, list[str]]:
        """Every thing, grouped by group set (built once per world)."""
        members = self._members
        if members is None:
            with self.lock:
                members = self._members
                if members is None:
                    members = {}
                    for facts in self.world.things.values():
                        members.setdefault(self.group_set_key(facts), []).append(facts.name)
                    self._members = members
        return members

    def things_with_attribute(self, attribute: str) -> Mapping[str, list[str]]:
        """value -> names of the things whose attribute `attribute` has that value (built once per world)."""
        index = self._attr_index.get(attribute)
        if index is None:
            with self.lock:
                index = self._attr_index.get(attribute)
                if index is None:
                    index = {}
                    for facts in self.world.things.values():
                        value = facts.attributes.get(attribute)
                        if value is not None:
                            index.setdefault(value, []).append(facts.name)
                    self._attr_index[attribute] = index
        return index
