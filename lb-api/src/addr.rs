//! Addresses as operators read them, for both families: the one place that turns lb-common's
//! network-order fields into `IpAddr`s and writes them the way Cilium does, IPv6 in brackets
//! wherever a port follows (`10.96.0.10:53/UDP`, `[fd00::1]:80/TCP`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use lb_common::{Addr6, addr6_octets, proto};

/// The address of an IPv4 field of lb-common (network byte order: its in-memory bytes are the
/// octets in order on any host).
pub fn ipv4(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

/// The address of an IPv6 field of lb-common.
pub fn ipv6(addr: Addr6) -> Ipv6Addr {
    Ipv6Addr::from(addr6_octets(addr))
}

/// An address field of lb-common of either family (`u32` for IPv4, `Addr6` for IPv6): code
/// that reads both families' types writes its conversions once, generic over this.
pub trait AddrField: Copy {
    /// The address ([`ipv4`] or [`ipv6`]).
    fn ip(self) -> IpAddr;
}

impl AddrField for u32 {
    fn ip(self) -> IpAddr {
        ipv4(self).into()
    }
}

impl AddrField for Addr6 {
    fn ip(self) -> IpAddr {
        ipv6(self).into()
    }
}

/// `addr:port`, an IPv6 address in brackets: `10.244.1.42:53`, `[fd00:10:244::5]:8080`.
pub fn socket_text(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// The protocol's name as `service list` writes it; `ANY` for a number lb has no name for.
pub fn proto_text(number: u8) -> &'static str {
    proto::name(number).unwrap_or("ANY")
}

/// A frontend or backend: address, port and protocol, written `10.96.0.10:53/UDP` or
/// `[fd00::1]:80/TCP` (Cilium's L3n4Addr text) and read back from that text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L4Addr {
    /// Address and port (host order).
    pub addr: SocketAddr,
    /// `TCP`, `UDP`, `ANY` ...
    pub proto: String,
}

impl L4Addr {
    /// The frontend or backend at `ip`:`port` (host order) for IP protocol `number`.
    pub fn new(ip: IpAddr, port: u16, number: u8) -> Self {
        Self {
            addr: SocketAddr::new(ip, port),
            proto: proto_text(number).to_owned(),
        }
    }
}

impl fmt::Display for L4Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.proto)
    }
}

/// Text that is not `addr:port/PROTO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not addr:port/PROTO (IPv6 in brackets: [fd00::1]:80/TCP)")]
pub struct ParseL4AddrError(String);

impl FromStr for L4Addr {
    type Err = ParseL4AddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseL4AddrError(text.to_owned());
        let (socket, proto) = text.rsplit_once('/').ok_or_else(error)?;
        if proto.is_empty() {
            return Err(error());
        }
        Ok(Self {
            addr: socket.parse().map_err(|_| error())?,
            proto: proto.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_print_as_cilium_does_and_read_back() {
        let table: [(IpAddr, u16, u8, &str); 4] = [
            (
                Ipv4Addr::new(10, 96, 0, 10).into(),
                53,
                proto::UDP,
                "10.96.0.10:53/UDP",
            ),
            (
                "fd00::1".parse().expect("ip"),
                80,
                proto::TCP,
                "[fd00::1]:80/TCP",
            ),
            (
                "fd00:10:244:1::c2".parse().expect("ip"),
                8080,
                proto::TCP,
                "[fd00:10:244:1::c2]:8080/TCP",
            ),
            (Ipv4Addr::UNSPECIFIED.into(), 0, 0, "0.0.0.0:0/ANY"),
        ];
        for (ip, port, number, text) in table {
            let addr = L4Addr::new(ip, port, number);
            assert_eq!(addr.to_string(), text);
            assert_eq!(text.parse::<L4Addr>(), Ok(addr), "{text}");
        }
    }

    #[test]
    fn malformed_text_is_an_error_naming_it() {
        for text in [
            "fd00::1:80/TCP",
            "10.96.0.10:53",
            "10.96.0.10:53/",
            "[fd00::1]/TCP",
            "",
        ] {
            let err = text.parse::<L4Addr>().expect_err(text);
            assert!(err.to_string().contains(&format!("`{text}`")), "{err}");
        }
    }

    #[test]
    fn network_order_fields_become_addresses() {
        assert_eq!(
            ipv4(u32::from_ne_bytes([192, 168, 56, 10])),
            Ipv4Addr::new(192, 168, 56, 10)
        );
        let v6: Ipv6Addr = "fd00:56::10".parse().expect("ip");
        assert_eq!(ipv6(lb_common::addr6_from_octets(v6.octets())), v6);
        assert_eq!(socket_text(v6.into(), 33802), "[fd00:56::10]:33802");
    }
}
