"""The camera journey: snapshots uploaded over mutual TLS, motion analysed, the people who may see it told."""
