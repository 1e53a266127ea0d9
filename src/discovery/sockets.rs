//! The discovery sockets of one family: the receiving socket bound to the
//! group port (with packet info, so each datagram's path is known), and a
//! sending socket per link (allowed to broadcast where it does). Socket options only; what
//! goes through them is [`super::Discovery`]'s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::netif::Link;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "cannot set up multicast or broadcast discovery on {what}; check --interface (an address or name from `ip addr`), or pass --no-multicast --no-broadcast"
    )]
    Socket {
        what: String,
        source: std::io::Error,
    },
}

pub(super) fn sock_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiscoveryError {
    let what = what.into();
    move |source| DiscoveryError::Socket { what, source }
}

/// The receiving socket of one family, bound to the group port; it joins
/// the group per link later.
pub fn recv_socket(v6: bool, port: u16) -> Result<UdpSocket, DiscoveryError> {
    let (domain, any) = if v6 {
        (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    } else {
        (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    let s =
        Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(sock_err("a new socket"))?;
    if v6 {
        s.set_only_v6(true).map_err(sock_err("IPV6_V6ONLY"))?;
    }
    s.set_reuse_address(true)
        .map_err(sock_err("SO_REUSEADDR"))?;
    crate::platform::reuse_port(&s).map_err(sock_err("SO_REUSEPORT"))?;
    s.set_nonblocking(true)
        .map_err(sock_err("non-blocking mode"))?;
    s.bind(&SocketAddr::new(any, port).into())
        .map_err(sock_err(format!("UDP port {port}")))?;
    crate::platform::only_joined_groups(&s, v6);
    crate::platform::packet_info(&s, v6);
    UdpSocket::from_std(s.into()).map_err(sock_err("the runtime"))
}

/// Whether a sending socket may broadcast (SO_BROADCAST).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broadcasts {
    Yes,
    No,
}

/// A sending socket whose datagrams leave through `link` only: bound to
/// the link's address, so even the limited broadcast 255.255.255.255
/// leaves by that interface (the system routes it by the bound address).
pub fn send_socket(link: &Link, broadcasts: Broadcasts) -> Result<UdpSocket, DiscoveryError> {
    let s = match link {
        Link::V4 { addr, .. } => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
                .map_err(sock_err("a new socket"))?;
            if broadcasts == Broadcasts::Yes {
                s.set_broadcast(true).map_err(sock_err("SO_BROADCAST"))?;
            }
            s.set_multicast_if_v4(addr)
                .map_err(sock_err(format!("IP_MULTICAST_IF {addr}")))?;
            s.set_multicast_loop_v4(true)
                .map_err(sock_err("IP_MULTICAST_LOOP"))?;
            s.set_multicast_ttl_v4(1)
                .map_err(sock_err("IP_MULTICAST_TTL"))?;
            s.bind(&SocketAddr::from((*addr, 0)).into())
                .map_err(sock_err(format!("address {addr}")))?;
            s
        }
        Link::V6 { name, index } => {
            let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
                .map_err(sock_err("a new socket"))?;
            s.set_only_v6(true).map_err(sock_err("IPV6_V6ONLY"))?;
            s.set_multicast_if_v6(*index)
                .map_err(sock_err(format!("IPV6_MULTICAST_IF {name}")))?;
            s.set_multicast_loop_v6(true)
                .map_err(sock_err("IPV6_MULTICAST_LOOP"))?;
            s.set_multicast_hops_v6(1)
                .map_err(sock_err("IPV6_MULTICAST_HOPS"))?;
            s
        }
    };
    s.set_nonblocking(true)
        .map_err(sock_err("non-blocking mode"))?;
    UdpSocket::from_std(s.into()).map_err(sock_err("the runtime"))
}
