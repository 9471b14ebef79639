//! Host names, resolved by the daemon itself from `/etc/hosts` and the name servers of
//! `/etc/resolv.conf`. Never through glibc: its `getaddrinfo` asks nscd first, at a socket a root
//! agent can stand up, and would then decide what a `[[protect.connect]]` host rule protects and
//! where the journal and notifications go. The files are host files agents cannot change (see
//! [`crate::host_services`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::{Hosts, Name, TokioResolver};

/// Where the name servers are named.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Names the host itself gives addresses.
pub const HOSTS: &str = "/etc/hosts";

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read {HOSTS}: {0}")]
    Hosts(std::io::Error),
    #[error("{0}")]
    Lookup(String),
    #[error("no addresses")]
    NoAddresses,
}

/// Which versions of the two files a resolver was made from: device, inode, size, mtime.
type Stamp = [Option<(u64, u64, u64, i64, i64)>; 2];

fn stamp() -> Stamp {
    [RESOLV_CONF, HOSTS].map(|path| {
        std::fs::metadata(path).ok().map(|meta| {
            (
                meta.dev(),
                meta.ino(),
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec(),
            )
        })
    })
}

/// What host names are resolved with: the hosts file as read, and a DNS resolver.
#[derive(Clone)]
struct Resolvers {
    stamp: Stamp,
    hosts: Arc<Hosts>,
    dns: TokioResolver,
}

/// Resolves host names; made again from the files when either changes.
#[derive(Clone, Default)]
pub struct HostResolver {
    made: Arc<Mutex<Option<Resolvers>>>,
}

impl HostResolver {
    fn current(&self) -> Result<Resolvers, ResolveError> {
        let now = stamp();
        let mut made = self
            .made
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = made.as_ref()
            && current.stamp == now
        {
            return Ok(current.clone());
        }
        let mut builder = match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            // As glibc does without a usable file (none, a dangling link, no name server in it):
            // the name server on this host. Names in the hosts file resolve all the same.
            Err(error) => {
                tracing::warn!(%error, "{RESOLV_CONF} names no usable name server; asking 127.0.0.1");
                let local =
                    NameServerConfigGroup::from_ips_clear(&[Ipv4Addr::LOCALHOST.into()], 53, true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), local),
                    TokioConnectionProvider::default(),
                )
            }
        };
        let options = builder.options_mut();
        // Every address a name has: a protected host is protected on each.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Looked up first, here, as glibc's files: a name there is not asked of DNS at all.
        options.use_hosts_file = ResolveHosts::Never;
        let hosts = match Hosts::from_system() {
            Ok(hosts) => hosts,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Hosts::default(),
            Err(error) => return Err(ResolveError::Hosts(error)),
        };
        let current = Resolvers {
            stamp: now,
            hosts: Arc::new(hosts),
            dns: builder.build(),
        };
        *made = Some(current.clone());
        Ok(current)
    }

    /// The addresses `host` (a name or an address) has now.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Ok(address) = host.parse::<IpAddr>() {
            return Ok(vec![address]);
        }
        let made = self.current()?;
        let name = Name::from_str(host).map_err(|error| ResolveError::Lookup(error.to_string()))?;
        let listed = listed_in(&made.hosts, &name);
        let mut addresses = match listed.is_empty() {
            false => listed,
            true => (made.dns.lookup_ip(name).await)
                .map_err(|error| ResolveError::Lookup(error.to_string()))?
                .iter()
                .collect(),
        };
        addresses.sort();
        addresses.dedup();
        match addresses.is_empty() {
            true => Err(ResolveError::NoAddresses),
            false => Ok(addresses),
        }
    }

    /// The socket addresses of `address`, `HOST:PORT` (`[V6]:PORT` for an IPv6 address).
    pub async fn socket_addresses(&self, address: &str) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(address) = address.parse::<SocketAddr>() {
            return Ok(vec![address]);
        }
        let invalid = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{address}: not HOST:PORT"),
            )
        };
        let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        let addresses = (self.addresses(host).await)
            .map_err(|error| std::io::Error::other(format!("{host}: {error}")))?;
        Ok(addresses
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }
}

/// The addresses the hosts file gives `name`, IPv4 and IPv6.
fn listed_in(hosts: &Hosts, name: &Name) -> Vec<IpAddr> {
    [RecordType::A, RecordType::AAAA]
        .into_iter()
        .filter_map(|kind| hosts.lookup_static_host(&Query::query(name.clone(), kind)))
        .flat_map(|lookup| {
            (lookup.iter())
                .filter_map(|data| data.ip_addr())
                .collect::<Vec<_>>()
        })
        .collect()
}

impl HostResolver {
    /// An HTTP client's builder that resolves host names here.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        // The one builder allowed: it resolves here from the start.
        #[allow(clippy::disallowed_methods)]
        reqwest::Client::builder().dns_resolver(Arc::new(self.clone()))
    }
}

impl reqwest::dns::Resolve for HostResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addresses = resolver.addresses(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(
                addresses
                    .into_iter()
                    .map(|address| SocketAddr::new(address, 0)),
            );
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_are_taken_as_they_are() {
        let resolver = HostResolver::default();
        assert_eq!(
            resolver.addresses("192.0.2.7").await.unwrap(),
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            resolver
                .socket_addresses("[2001:db8::1]:514")
                .await
                .unwrap(),
            vec!["[2001:db8::1]:514".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn names_come_from_the_hosts_file() {
        let mut hosts = Hosts::default();
        let file =
            "10.0.0.5 db.example.test db\nfd00::5 db.example.test\n# 10.0.0.6 db.example.test\n";
        hosts.read_hosts_conf(file.as_bytes()).unwrap();
        let db = |name: &str| listed_in(&hosts, &Name::from_str(name).unwrap());
        let both: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(db("db.example.test"), both);
        assert_eq!(db("db.example.test."), both);
        assert_eq!(db("db"), vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert!(db("other.example.test").is_empty());
    }

    #[tokio::test]
    async fn a_bad_address_is_named() {
        let resolver = HostResolver::default();
        for bad in ["no-port", "host:port", "host:99999"] {
            let error = resolver.socket_addresses(bad).await.unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
