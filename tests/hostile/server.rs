//! Hostile-peer regression tests: server.
