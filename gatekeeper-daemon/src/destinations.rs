//! Protected network destinations: parsing CIDRs and ports, compiling them into the kernel's
//! longest-prefix-match trie, and naming the rule a denied destination matched.
//!
//! Every address is handled in IPv6 form, IPv4 as `::ffff:a.b.c.d`, so that one rule holds for
//! v4 and v6 sockets alike. IPv4 rules hold in the NAT64 form `64:ff9b::a.b.c.d` too, which a
//! translator on the way delivers to the IPv4 address.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use gatekeeper_common::{
    IPPROTO_TCP, IPPROTO_UDP, MAX_PORT_RANGES, PROTOCOL_DAEMON, PROTOCOL_TCP, PROTOCOL_UDP,
    PortRange, PortRanges,
};
use serde::{Deserialize, Serialize};

/// An address prefix in IPv6 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub address: [u8; 16],
    /// In bits of the IPv6 form (an IPv4 /16 is 112).
    pub len: u8,
}

/// The IPv6 form of an address.
pub fn v6_form(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An address back in its natural form (IPv4-mapped shown as IPv4).
pub fn natural(address: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(address);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The first 96 bits of an IPv4-mapped address, `::ffff:0:0/96`.
const IPV4_MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
/// The NAT64 well-known prefix `64:ff9b::/96` (RFC 6052).
const NAT64: [u8; 12] = [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];

fn masked(address: [u8; 16], len: u8) -> [u8; 16] {
    let bits = u128::from_be_bytes(address);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    (bits & mask).to_be_bytes()
}

impl Prefix {
    pub fn host(ip: IpAddr) -> Self {
        Self {
            address: v6_form(ip),
            len: 128,
        }
    }

    pub fn contains(&self, address: [u8; 16]) -> bool {
        masked(address, self.len) == self.address
    }

    fn contains_prefix(&self, other: &Prefix) -> bool {
        self.len <= other.len && self.contains(other.address)
    }

    /// An IPv4 prefix (in IPv4-mapped form) as it reads behind the NAT64 prefix.
    fn nat64_twin(&self) -> Option<Prefix> {
        if self.len < 96 || self.address[..12] != IPV4_MAPPED {
            return None;
        }
        let mut address = self.address;
        address[..12].copy_from_slice(&NAT64);
        Some(Prefix {
            address,
            len: self.len,
        })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match natural(self.address) {
            IpAddr::V4(v4) if self.len >= 96 => write!(f, "{v4}/{}", self.len - 96),
            _ => write!(f, "{}/{}", Ipv6Addr::from(self.address), self.len),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error("{0:?} is not an IP address or CIDR prefix")]
    BadCidr(String),
    #[error("{text:?} has host bits set; did you mean {suggestion}?")]
    HostBits { text: String, suggestion: String },
    #[error("{0:?} is not a port (1-65535) or range such as \"8000-8100\"")]
    BadPort(String),
    #[error("{0:?} is not a protocol: use \"tcp\", \"udp\" or \"any\"")]
    BadProtocol(String),
    #[error("{prefix} is covered by more than {MAX_PORT_RANGES} port ranges; merge some rules")]
    TooManyRanges { prefix: String },
}

/// Parses `10.20.0.0/16`, `fd00::/8`, or a single address (a host prefix).
pub fn parse_cidr(text: &str) -> Result<Prefix, DestinationError> {
    let bad = || DestinationError::BadCidr(text.to_owned());
    let (address, len) = match text.split_once('/') {
        Some((address, len)) => (address, Some(len.parse::<u8>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let ip: IpAddr = address.trim().parse().map_err(|_| bad())?;
    let (len, max) = match ip {
        IpAddr::V4(_) => (len.unwrap_or(32), 32),
        IpAddr::V6(_) => (len.unwrap_or(128), 128),
    };
    if len > max {
        return Err(bad());
    }
    let len = len + (128 - max);
    let address = v6_form(ip);
    if masked(address, len) != address {
        let suggestion = Prefix {
            address: masked(address, len),
            len,
        };
        return Err(DestinationError::HostBits {
            text: text.to_owned(),
            suggestion: suggestion.to_string(),
        });
    }
    Ok(Prefix { address, len })
}

/// A port or range as written in the config: `5432` or `"8000-8100"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(i64),
    Text(String),
}

pub fn parse_port(spec: &PortSpec) -> Result<(u16, u16), DestinationError> {
    let port = |text: &str| text.trim().parse::<u16>().ok().filter(|port| *port != 0);
    match spec {
        PortSpec::Number(number) => u16::try_from(*number)
            .ok()
            .filter(|port| *port != 0)
            .map(|port| (port, port))
            .ok_or_else(|| DestinationError::BadPort(number.to_string())),
        PortSpec::Text(text) => {
            let range = match text.split_once('-') {
                Some((first, last)) => port(first).zip(port(last)),
                None => port(text).map(|port| (port, port)),
            };
            range
                .filter(|(first, last)| first <= last)
                .ok_or_else(|| DestinationError::BadPort(text.clone()))
        }
    }
}

/// Protocols as a mask of PROTOCOL_* bits.
pub fn parse_protocol(text: &str) -> Result<u32, DestinationError> {
    match text {
        "tcp" => Ok(PROTOCOL_TCP),
        "udp" => Ok(PROTOCOL_UDP),
        "any" => Ok(PROTOCOL_TCP | PROTOCOL_UDP),
        other => Err(DestinationError::BadProtocol(other.to_owned())),
    }
}

/// One rule's reach: prefixes, ports (empty: all) and protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub prefixes: Vec<Prefix>,
    pub ports: Vec<(u16, u16)>,
    pub protocols: u32,
}

impl Reach {
    /// The rule's prefixes with the NAT64 form of its IPv4 ones.
    fn all_prefixes(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.prefixes
            .iter()
            .flat_map(|prefix| std::iter::once(*prefix).chain(prefix.nat64_twin()))
    }

    fn ranges(&self) -> Vec<PortRange> {
        if self.ports.is_empty() {
            return vec![PortRange {
                first: 0,
                last: u16::MAX,
                protocols: self.protocols,
            }];
        }
        self.ports
            .iter()
            .map(|&(first, last)| PortRange {
                first,
                last,
                protocols: self.protocols,
            })
            .collect()
    }

    fn covers(&self, port: u16, protocol: u32) -> bool {
        self.protocols & protocol != 0
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|&(first, last)| first <= port && port <= last))
    }
}

/// The daemon's HTTP listener at `address`, which agents never reach: that address, or on a
/// wildcard every address of its family (an IPv6 wildcard takes IPv4 too), for that TCP port.
pub fn listener_reach(address: SocketAddr) -> Reach {
    let prefix = match address.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => Prefix {
            address: v6_form(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            len: 96,
        },
        IpAddr::V6(v6) if v6.is_unspecified() => Prefix {
            address: [0; 16],
            len: 0,
        },
        ip => Prefix::host(ip),
    };
    Reach {
        prefixes: vec![prefix],
        ports: vec![(address.port(), address.port())],
        protocols: PROTOCOL_TCP | PROTOCOL_DAEMON,
    }
}

/// The trie's contents: each prefix with the port ranges of every rule whose prefix contains it,
/// because the kernel sees only the longest match.
pub fn compile(reaches: &[Reach]) -> Result<BTreeMap<Prefix, PortRanges>, DestinationError> {
    let prefixes: Vec<Prefix> = reaches.iter().flat_map(Reach::all_prefixes).collect();
    let mut table = BTreeMap::new();
    for prefix in prefixes {
        if table.contains_key(&prefix) {
            continue;
        }
        let mut ranges: Vec<PortRange> = reaches
            .iter()
            .filter(|reach| {
                reach
                    .all_prefixes()
                    .any(|outer| outer.contains_prefix(&prefix))
            })
            .flat_map(Reach::ranges)
            .collect();
        ranges.sort_by_key(|range| (range.first, range.last, range.protocols));
        ranges.dedup();
        if ranges.len() > MAX_PORT_RANGES {
            return Err(DestinationError::TooManyRanges {
                prefix: prefix.to_string(),
            });
        }
        let mut compiled = PortRanges {
            count: ranges.len() as u32,
            ..PortRanges::default()
        };
        compiled.ranges[..ranges.len()].copy_from_slice(&ranges);
        table.insert(prefix, compiled);
    }
    Ok(table)
}

/// The index of the rule that best explains a denial: the longest matching prefix among rules
/// whose ports and protocols cover it.
pub fn matching_rule(
    reaches: &[Reach],
    address: [u8; 16],
    port: u16,
    protocol: u8,
) -> Option<usize> {
    let bit = protocol_bit(protocol);
    reaches
        .iter()
        .enumerate()
        .filter(|(_, reach)| reach.covers(port, bit))
        .filter_map(|(index, reach)| {
            reach
                .all_prefixes()
                .filter(|prefix| prefix.contains(address))
                .map(|prefix| prefix.len)
                .max()
                .map(|len| (len, index))
        })
        .max_by_key(|(len, index)| (*len, std::cmp::Reverse(*index)))
        .map(|(_, index)| index)
}

fn protocol_bit(protocol: u8) -> u32 {
    match protocol {
        IPPROTO_TCP => PROTOCOL_TCP,
        IPPROTO_UDP => PROTOCOL_UDP,
        _ => 0,
    }
}

/// A destination as requests and reviewers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// The configured host name the address was resolved from, when the rule names one.
    pub host: Option<String>,
}

impl Destination {
    pub fn new(address: [u8; 16], port: u16, protocol: u8, host: Option<String>) -> Self {
        Self {
            address: natural(address),
            port,
            protocol: match protocol {
                IPPROTO_TCP => "tcp".to_owned(),
                IPPROTO_UDP => "udp".to_owned(),
                other => other.to_string(),
            },
            host,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self
            .host
            .as_deref()
            .map(|host| format!(" ({host})"))
            .unwrap_or_default();
        match self.address {
            IpAddr::V6(v6) => write!(f, "{} [{v6}]:{}{host}", self.protocol, self.port),
            IpAddr::V4(v4) => write!(f, "{} {v4}:{}{host}", self.protocol, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
        v6_form(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
    }

    fn reach(cidr: &str, ports: &[(u16, u16)], protocols: u32) -> Reach {
        Reach {
            prefixes: vec![parse_cidr(cidr).unwrap()],
            ports: ports.to_vec(),
            protocols,
        }
    }

    #[test]
    fn cidrs_parse_into_v6_form() {
        let prefix = parse_cidr("10.20.0.0/16").unwrap();
        assert_eq!(prefix.len, 112);
        assert!(prefix.contains(v4(10, 20, 3, 4)));
        assert!(!prefix.contains(v4(10, 21, 0, 0)));
        assert_eq!(prefix.to_string(), "10.20.0.0/16");
        assert_eq!(parse_cidr("127.0.0.5").unwrap().len, 128);
        let v6 = parse_cidr("fd00::/8").unwrap();
        assert_eq!(v6.len, 8);
        assert_eq!(v6.to_string(), "fd00::/8");
        assert!(
            parse_cidr("::1")
                .unwrap()
                .contains(v6_form("::1".parse().unwrap()))
        );
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for bad in [
            "10.20.0.0/33",
            "10.20.0/16",
            "db.internal",
            "::1/129",
            "10.0.0.0/x",
            "",
        ] {
            assert!(
                matches!(parse_cidr(bad), Err(DestinationError::BadCidr(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_cidr("10.20.1.0/16"),
            Err(DestinationError::HostBits {
                text: "10.20.1.0/16".into(),
                suggestion: "10.20.0.0/16".into()
            })
        );
    }

    #[test]
    fn ports_and_protocols_parse() {
        assert_eq!(parse_port(&PortSpec::Number(5432)), Ok((5432, 5432)));
        assert_eq!(
            parse_port(&PortSpec::Text("8000-8100".into())),
            Ok((8000, 8100))
        );
        assert_eq!(parse_port(&PortSpec::Text("443".into())), Ok((443, 443)));
        for bad in ["0", "8100-8000", "70000", "a-b", "1-"] {
            assert!(parse_port(&PortSpec::Text(bad.into())).is_err(), "{bad}");
        }
        assert!(parse_port(&PortSpec::Number(0)).is_err());
        assert!(parse_port(&PortSpec::Number(65536)).is_err());
        assert_eq!(parse_protocol("any"), Ok(PROTOCOL_TCP | PROTOCOL_UDP));
        assert!(parse_protocol("icmp").is_err());
    }

    #[test]
    fn longer_prefixes_carry_the_ranges_of_prefixes_containing_them() {
        let reaches = [
            reach("10.0.0.0/8", &[(22, 22)], PROTOCOL_TCP),
            reach("10.20.0.0/16", &[(5432, 5432)], PROTOCOL_TCP),
            reach("192.168.0.0/16", &[], PROTOCOL_UDP),
        ];
        let table = compile(&reaches).unwrap();
        assert_eq!(table.len(), 6, "each v4 prefix also in its NAT64 form");
        let inner = table[&parse_cidr("10.20.0.0/16").unwrap()];
        assert!(
            inner.covers(22, PROTOCOL_TCP),
            "the /8 rule still holds inside the /16"
        );
        assert!(inner.covers(5432, PROTOCOL_TCP));
        assert!(!inner.covers(5432, PROTOCOL_UDP));
        let outer = table[&parse_cidr("10.0.0.0/8").unwrap()];
        assert!(!outer.covers(5432, PROTOCOL_TCP));
        let all_ports = table[&parse_cidr("192.168.0.0/16").unwrap()];
        assert!(all_ports.covers(0, PROTOCOL_UDP) && all_ports.covers(65535, PROTOCOL_UDP));
    }

    #[test]
    fn the_daemon_listener_is_marked_on_its_address_or_under_a_wildcard() {
        let daemon = |port| PortRange {
            first: port,
            last: port,
            protocols: PROTOCOL_TCP | PROTOCOL_DAEMON,
        };
        let table = compile(&[listener_reach("127.0.0.1:8787".parse().unwrap())]).unwrap();
        let loopback = Prefix::host("127.0.0.1".parse().unwrap());
        assert_eq!(table[&loopback].ranges[..1], [daemon(8787)]);
        assert!(table[&loopback].covers(8787, PROTOCOL_DAEMON));
        assert!(!table[&loopback].covers(8788, PROTOCOL_DAEMON));

        // On every IPv4 address: a rule's prefix carries the listener's range too.
        let reaches = [
            reach("10.0.0.0/8", &[(5432, 5432)], PROTOCOL_TCP),
            listener_reach("0.0.0.0:9000".parse().unwrap()),
        ];
        let table = compile(&reaches).unwrap();
        let rule = parse_cidr("10.0.0.0/8").unwrap();
        assert!(table[&rule].covers(9000, PROTOCOL_DAEMON));
        assert!(table[&rule].covers(5432, PROTOCOL_TCP));
        assert!(!table[&rule].covers(5432, PROTOCOL_DAEMON));
        let everything_v6 = compile(&[listener_reach("[::]:9000".parse().unwrap())]).unwrap();
        assert_eq!(
            everything_v6.keys().next().map(|prefix| prefix.len),
            Some(0)
        );
    }

    #[test]
    fn too_many_ranges_refused() {
        let ports: Vec<(u16, u16)> = (1..=17).map(|port| (port * 10, port * 10)).collect();
        let error = compile(&[reach("10.0.0.0/8", &ports, PROTOCOL_TCP)]).unwrap_err();
        assert!(matches!(error, DestinationError::TooManyRanges { .. }));
    }

    #[test]
    fn the_longest_covering_rule_is_named() {
        let reaches = [
            reach("10.0.0.0/8", &[], PROTOCOL_TCP | PROTOCOL_UDP),
            reach("10.20.0.0/16", &[(5432, 5432)], PROTOCOL_TCP),
        ];
        assert_eq!(
            matching_rule(&reaches, v4(10, 20, 0, 5), 5432, IPPROTO_TCP),
            Some(1)
        );
        assert_eq!(
            matching_rule(&reaches, v4(10, 20, 0, 5), 53, IPPROTO_UDP),
            Some(0)
        );
        assert_eq!(
            matching_rule(&reaches, v4(11, 0, 0, 1), 53, IPPROTO_UDP),
            None
        );
    }

    fn nat64(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
        let mut address = [0u8; 16];
        address[..12].copy_from_slice(&NAT64);
        address[12..].copy_from_slice(&[a, b, c, d]);
        address
    }

    #[test]
    fn v4_rules_cover_the_nat64_form() {
        let reaches = [
            reach("10.20.0.0/16", &[(5432, 5432)], PROTOCOL_TCP),
            reach("fd00::/8", &[], PROTOCOL_TCP),
        ];
        let table = compile(&reaches).unwrap();
        assert_eq!(table.len(), 3, "the v4 rule twice, the v6 rule once");
        let twin = parse_cidr("64:ff9b::a14:0/112").unwrap();
        assert!(table[&twin].covers(5432, PROTOCOL_TCP));
        assert!(!table[&twin].covers(5433, PROTOCOL_TCP));
        assert_eq!(
            matching_rule(&reaches, nat64(10, 20, 0, 5), 5432, IPPROTO_TCP),
            Some(0)
        );
        assert_eq!(
            matching_rule(&reaches, nat64(10, 21, 0, 5), 5432, IPPROTO_TCP),
            None
        );
        // Shown as the address the agent named.
        let destination = Destination::new(nat64(10, 20, 0, 5), 5432, IPPROTO_TCP, None);
        assert_eq!(destination.to_string(), "tcp [64:ff9b::a14:5]:5432");
    }

    #[test]
    fn nat64_twins_nest_like_their_v4_prefixes() {
        // Every v4 address, and a v6 rule over the whole NAT64 range with its own ports.
        let reaches = [
            reach("0.0.0.0/0", &[(22, 22)], PROTOCOL_TCP),
            reach("64:ff9b::/96", &[(443, 443)], PROTOCOL_TCP),
            reach("10.0.0.0/8", &[(5432, 5432)], PROTOCOL_TCP),
        ];
        let table = compile(&reaches).unwrap();
        let inner = table[&parse_cidr("64:ff9b::a00:0/104").unwrap()];
        for port in [22, 443, 5432] {
            assert!(inner.covers(port, PROTOCOL_TCP), "{port}");
        }
        let v4_inner = table[&parse_cidr("10.0.0.0/8").unwrap()];
        assert!(
            !v4_inner.covers(443, PROTOCOL_TCP),
            "the v6 rule is not a v4 one"
        );
        // A v6 rule has no twin; host rules get theirs as they resolve.
        assert!(parse_cidr("fd00::1").unwrap().nat64_twin().is_none());
        assert!(
            Prefix::host("10.0.0.1".parse().unwrap())
                .nat64_twin()
                .is_some()
        );
    }

    #[test]
    fn destinations_display_naturally() {
        let v4_destination = Destination::new(v4(127, 0, 0, 5), 5432, IPPROTO_TCP, None);
        assert_eq!(v4_destination.to_string(), "tcp 127.0.0.5:5432");
        let v6 = Destination::new(
            v6_form("::1".parse().unwrap()),
            53,
            IPPROTO_UDP,
            Some("db".into()),
        );
        assert_eq!(v6.to_string(), "udp [::1]:53 (db)");
    }
}
