//! Hostile-peer regression tests: fetch.
