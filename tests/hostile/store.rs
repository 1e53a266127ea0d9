//! Hostile-peer regression tests: store.
