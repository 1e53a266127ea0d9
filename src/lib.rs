//! lanshare: zero-configuration peer-to-peer file sharing on a LAN.
//!
//! Module map (each module's doc says what it owns):
//! - [`id`], [`chunkset`], [`manifest`], [`resolve`]: pure data and rules;
//! - [`wire`]: bytes <-> messages for datagrams and TCP frames;
//! - [`inventory`]: what a node offers, its digest, deltas and change log
//!   (pure); [`store`]: the only code touching content files, publishes the
//!   inventory; [`fswatch`]: notifications that trigger its rescans;
//! - [`dict`]: what the network offers (the only shared discovery state);
//! - [`discovery`]: multicast announce/listen; [`mdns`]: DNS-SD;
//!   [`netif`]: interfaces; [`reach`]: inventory pulls
//!   and liveness probes over TCP; [`exchange`]: peer exchange (hints
//!   heard from peers, dialed before anyone is listed);
//! - [`peer`]: the TCP server (uploader) and client;
//! - [`fetch`]: the download scheduler; [`retry`]: the one backoff rule;
//! - [`service`]: answers every request (status, ls, peers, fetch, share);
//! - [`control`], [`api`]: the local control endpoint (server loop and
//!   typed client) and its data; [`ui`]: the web dashboard and HTTP JSON
//!   API; [`transfers`]: transfers in progress; [`library`], [`history`]:
//!   the paged library and the transfer logs as the API shows them;
//! - [`tracker`]: the optional central registry (server) and its client;
//! - [`node`]: binds the sockets and wires the tasks together; [`task`]:
//!   named tasks and their shutdown; [`cli`], [`config`]: the edges.

// No function in the library over 80 lines of code (clippy.toml); no file
// over 600 lines before its tests (scripts/check-sizes.sh). Both run in CI.
#![warn(clippy::too_many_lines)]

pub mod api;
pub mod chunkset;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod dict;
pub mod discovery;
pub mod exchange;
pub mod fetch;
pub mod fswatch;
pub mod history;
pub mod id;
pub mod identity;
pub mod inventory;
pub mod library;
pub mod logs;
pub mod ls_cmd;
pub mod manifest;
pub mod manual;
pub mod mdns;
pub mod netif;
pub mod node;
pub mod peer;
pub mod platform;
pub mod reach;
pub mod resolve;
pub mod retry;
pub mod service;
pub mod stats;
pub mod store;
pub mod swarm;
pub mod task;
pub mod tracker;
pub mod transfers;
pub mod transfers_cmd;
pub mod ui;
pub mod warn_once;
pub mod wire;
