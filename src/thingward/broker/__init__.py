"""Data-plane adapters: the policy engine decides, adapters only translate and enforce."""
