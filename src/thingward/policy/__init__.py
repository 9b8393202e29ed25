"""Least privilege for things: policy documents, the compiled decision engine, explain, who-can and lint.

Pure code: no storage, no sockets. The registry builds a `PolicyWorld`; a `PolicyEngine` decides
from it (`authorize` is the broker's hot path), explains decisions and lists who can do what.
"""

from thingward.policy.document import (
    DEFAULT_POLICY,
    DEFAULT_POLICY_JSON,
    MAX_RESOURCES_PER_STATEMENT,
    MAX_STATEMENTS,
    Effect,
    PolicyDocument,
    Statement,
    parse_policy_document,
)
from thingward.policy.engine import DEFAULT_CACHE_SIZE, PolicyEngine
from thingward.policy.explain import Explanation, MatchedStatement
from thingward.policy.lint import LintFinding, Severity, lint_world
from thingward.policy.reference import reference_authorize
from thingward.policy.topics import MAX_RESOURCE_LENGTH, TopicPattern, parse_topic_pattern
from thingward.policy.whocan import Grant, ThingGrants, WhoCan
from thingward.policy.world import Attachment, GroupFacts, PolicyWorld, ThingFacts

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_POLICY",
    "DEFAULT_POLICY_JSON",
    "MAX_RESOURCES_PER_STATEMENT",
    "MAX_RESOURCE_LENGTH",
    "MAX_STATEMENTS",
    "Attachment",
    "Effect",
    "Explanation",
    "Grant",
    "GroupFacts",
    "LintFinding",
    "MatchedStatement",
    "PolicyDocument",
    "PolicyEngine",
    "PolicyWorld",
    "Severity",
    "Statement",
    "ThingFacts",
    "ThingGrants",
    "TopicPattern",
    "WhoCan",
    "lint_world",
    "parse_policy_document",
    "parse_topic_pattern",
    "reference_authorize",
]
