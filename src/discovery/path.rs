//! Which path a received datagram came by (IPv4 or IPv6 multicast, IPv4
//! broadcast, unicast), from the packet info the system gives
//! ([`crate::platform::recv_datagram`]); where it gives none (the
//! portable build), an IPv4 datagram's path is unknown and an IPv6 one is
//! taken as multicast (the IPv6 socket only hears the group and what is
//! sent to this node). Owns that classification; never touches sockets or
//! the dictionary.

use std::net::IpAddr;

use crate::api::FoundVia;
use crate::platform::PacketInfo;
use crate::stats::Counter;

/// How a datagram reached this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    Multicast4,
    Multicast6,
    Broadcast,
    /// Sent to one of this node's addresses.
    Unicast,
    /// IPv4, destination unknown: multicast or broadcast.
    Ipv4Unknown,
}

/// A datagram's path and the interface it arrived on (0: not known).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    pub path: Path,
    pub ifindex: u32,
}

impl Route {
    /// The route of a datagram received on the IPv6 socket (`v6`) or the
    /// IPv4 one, with `info` when the system gave it. An IPv4 datagram
    /// not to a group is a broadcast when its destination is the limited
    /// broadcast address, or is not the address the system answers from
    /// (a subnet's broadcast address; a unicast datagram's destination is
    /// that address).
    pub fn of(v6: bool, info: Option<PacketInfo>) -> Route {
        let Some(info) = info else {
            let path = if v6 {
                Path::Multicast6
            } else {
                Path::Ipv4Unknown
            };
            return Route { path, ifindex: 0 };
        };
        let path = match info.dst {
            IpAddr::V6(d) if d.is_multicast() => Path::Multicast6,
            IpAddr::V6(_) => Path::Unicast,
            IpAddr::V4(d) if d.is_multicast() => Path::Multicast4,
            IpAddr::V4(d) if d.is_broadcast() => Path::Broadcast,
            IpAddr::V4(d) if info.local.is_some_and(|l| l != d) => Path::Broadcast,
            IpAddr::V4(_) => Path::Unicast,
        };
        Route {
            path,
            ifindex: info.ifindex,
        }
    }

    /// Whether the interface is known: copies by an unknown route are
    /// taken as path duplicates whatever their path.
    pub fn known(&self) -> bool {
        self.ifindex != 0
    }
}

impl Path {
    /// How a peer first heard this way was found.
    pub fn found_via(self) -> FoundVia {
        match self {
            Path::Broadcast => FoundVia::Broadcast,
            // Unicast datagrams are a test's or a tool's: the discovery
            // port is the multicast one.
            Path::Multicast4 | Path::Multicast6 | Path::Unicast | Path::Ipv4Unknown => {
                FoundVia::Multicast
            }
        }
    }

    /// The counter of datagrams received this way.
    pub fn counter(self) -> Counter {
        match self {
            Path::Multicast4 => Counter::ReceivedMulticast4,
            Path::Multicast6 => Counter::ReceivedMulticast6,
            Path::Broadcast => Counter::ReceivedBroadcast,
            Path::Unicast => Counter::ReceivedUnicast,
            Path::Ipv4Unknown => Counter::ReceivedIpv4Unclassified,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn v4(dst: [u8; 4], local: [u8; 4]) -> Option<PacketInfo> {
        Some(PacketInfo {
            dst: IpAddr::V4(dst.into()),
            local: Some(Ipv4Addr::from(local)),
            ifindex: 3,
        })
    }

    #[test]
    fn destinations_tell_the_path() {
        let me = [10, 0, 0, 2];
        let path = |info| Route::of(false, info).path;
        assert_eq!(path(v4([239, 255, 73, 73], me)), Path::Multicast4);
        assert_eq!(path(v4([255, 255, 255, 255], me)), Path::Broadcast);
        assert_eq!(path(v4([10, 0, 0, 255], me)), Path::Broadcast);
        assert_eq!(path(v4([10, 0, 1, 255], [10, 0, 0, 2])), Path::Broadcast);
        assert_eq!(path(v4(me, me)), Path::Unicast);
        assert_eq!(path(None), Path::Ipv4Unknown);
        assert!(!Route::of(false, None).known());
        let six = |dst: &str| {
            Route::of(
                true,
                Some(PacketInfo {
                    dst: dst.parse().unwrap(),
                    local: None,
                    ifindex: 2,
                }),
            )
        };
        assert_eq!(six("ff02::6c61:6e73").path, Path::Multicast6);
        assert_eq!(six("fe80::1").path, Path::Unicast);
        assert!(six("ff02::6c61:6e73").known());
        assert_eq!(Route::of(true, None).path, Path::Multicast6);
        assert_eq!(Path::Broadcast.found_via(), FoundVia::Broadcast);
        assert_eq!(Path::Multicast6.found_via(), FoundVia::Multicast);
    }
}
