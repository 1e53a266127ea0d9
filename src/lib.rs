//! lanshare: zero-configuration peer-to-peer file sharing on a LAN.
//!
//! Module map (each module's doc says what it owns):
//! - [`id`], [`chunkset`], [`manifest`], [`resolve`]: pure data and rules;
//! - [`wire`]: bytes <-> messages for datagrams and TCP frames;
//! - [`store`]: the only code touching content files; [`fswatch`]:
//!   notifications that trigger its rescans;
//! - [`dict`]: what the network offers (the only shared discovery state);
//! - [`discovery`]: multicast announce/listen; [`mdns`]: DNS-SD;
//!   [`netif`]: interfaces; [`reach`]: inventory pulls
//!   and liveness probes over TCP;
//! - [`peer`]: the TCP server (uploader) and client;
//! - [`fetch`]: the download scheduler;
//! - [`control`], [`api`]: the local control endpoint and its data;
//! - [`tracker`]: the optional central registry (server) and its client;
//! - [`node`]: wires the tasks together; [`cli`], [`config`]: the edges.

pub mod api;
pub mod chunkset;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod dict;
pub mod discovery;
pub mod fetch;
pub mod fswatch;
pub mod id;
pub mod logs;
pub mod manifest;
pub mod manual;
pub mod mdns;
pub mod netif;
pub mod node;
pub mod peer;
pub mod platform;
pub mod reach;
pub mod resolve;
pub mod store;
pub mod tracker;
pub mod wire;
