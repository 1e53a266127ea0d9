//! Hostile-peer regression tests: dict.
