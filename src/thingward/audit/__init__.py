"""Fleet security audit: pure checks over a snapshot of the platform, and reports of what they find."""
