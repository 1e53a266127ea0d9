//! Regression tests for attacks by a hostile machine on the LAN (issue 8):
//! each runs the attack against a real node and asserts the safe outcome.
//! Every area has its own module; the rogue peers are built on the
//! library's own `wire` types so they speak the protocol exactly and then lie.

mod dict;
mod fetch;
mod folder;
mod server;
mod store;
