"""The policy engine: Istio AuthorizationPolicy semantics, compiled once, evaluated purely.

``compile_policies`` validates a tenant's documents and builds frozen matchers;
``evaluate`` decides one request (no I/O, no state); ``explain`` gives the same decision with
the per-rule reasons. Decisions follow what Envoy's RBAC filter does with the config Istio
generates for the same policies (see docs/semantics.md).

Invalid input, compile error or Istio's treatment:

=========================================  ===================================================
unknown field anywhere, wrong type,         DocumentError (file:line and field): a typo must
empty string value, unknown ``action``,     never change what a policy matches. Istio's
``CUSTOM``, ``provider``, a bad dry-run     validating webhook rejects these too.
annotation, a condition without values,
a path template Envoy would reject,
a duplicate policy name
invalid port, IP/CIDR, header/claim key     Istio's builder: ALLOW -> the rule is dropped
                                            (never matches); DENY/AUDIT -> the value is
                                            dropped. A warning names file:line and field.
unknown ``when`` key                        ALLOW -> the rule is dropped; DENY/AUDIT -> the
                                            condition is dropped, with a warning
``selector``/``targetRef``/``targetRefs``   warning; the policy applies to the whole tenant
=========================================  ===================================================

Deliberate deviations from Istio:

- An unknown ``when`` key in a DENY/AUDIT policy: Istio's builder drops the whole rule, which
  makes a DENY policy match less; we drop only the condition (SEMANTICS: never the reverse).
- No trust domains configured: principals are taken as written. Istio always has at least its
  own trust domain and rewrites ``cluster.local/...`` to it.
- ``experimental.envoy.filters.*`` conditions: we never hold other Envoy filters' metadata, so
  the values never match and the notValues always hold, as in an Envoy without that filter.
- ``trustDomains``/``notTrustDomains`` ``*`` (no golden data): any trust domain,
  ``spiffe://[^/]+/.*``.
"""

from extauthz.policy.compile import CompiledPolicies, compile_policies
from extauthz.policy.engine import PolicyResult, RuleRef, ShadowResult, evaluate
from extauthz.policy.explain import Explanation, PolicyTrace, RuleTrace, explain

__all__ = [
    "CompiledPolicies",
    "Explanation",
    "PolicyResult",
    "PolicyTrace",
    "RuleRef",
    "RuleTrace",
    "ShadowResult",
    "compile_policies",
    "evaluate",
    "explain",
]
