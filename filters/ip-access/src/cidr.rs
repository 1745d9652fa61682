//! CIDR ranges and the allow/deny decision: pure code, unit-tested natively.

use std::net::IpAddr;

use serde::Deserialize;

/// `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32` or `/128` implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("\"{text}\" is not an address or CIDR range"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("\"{text}\": prefix length must be 0..={bits}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        // An IPv4-mapped IPv6 client (::ffff:a.b.c.d) is the IPv4 client it maps.
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

/// The plugin configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// `deny` wins; with an `allow` list, only addresses in it pass.
#[derive(Debug, Default)]
pub struct AccessRules {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl AccessRules {
    pub fn parse(bytes: &[u8]) -> Result<AccessRules, String> {
        let raw: RawRules =
            serde_json::from_slice(bytes).map_err(|e| format!("ip access rules: {e}"))?;
        let ranges = |field: &str, list: &[String]| {
            list.iter()
                .enumerate()
                .map(|(i, text)| Cidr::parse(text).map_err(|e| format!("{field}[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(AccessRules {
            allow: ranges("allow", &raw.allow)?,
            deny: ranges("deny", &raw.deny)?,
        })
    }

    pub fn permits(&self, address: IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(address)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(address))
    }
}

/// The address in Envoy's `source.address` (`1.2.3.4:5678`, `[::1]:5678`).
pub fn address_of(source: &str) -> Option<IpAddr> {
    if let Ok(address) = source.parse::<std::net::SocketAddr>() {
        return Some(address.ip());
    }
    source.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn ranges_contain_what_they_cover() {
        let net = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(net.contains(ip("10.1.255.7")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("cidr")
                .contains(ip("8.8.8.8"))
        );
        let v6 = Cidr::parse("2001:db8::/32").expect("cidr");
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        let one = Cidr::parse("127.0.0.1").expect("cidr");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
    }

    #[test]
    fn deny_wins_and_an_allow_list_is_exclusive() {
        let rules = AccessRules::parse(br#"{"allow": ["10.0.0.0/8"], "deny": ["10.9.0.0/16"]}"#)
            .expect("rules");
        assert!(rules.permits(ip("10.1.2.3")));
        assert!(!rules.permits(ip("10.9.2.3")));
        assert!(!rules.permits(ip("192.168.1.1")));
        let deny_only = AccessRules::parse(br#"{"deny": ["192.168.0.0/16"]}"#).expect("rules");
        assert!(deny_only.permits(ip("10.1.2.3")) && !deny_only.permits(ip("192.168.3.3")));
        assert_eq!(address_of("[::1]:80"), Some(ip("::1")));
        assert_eq!(address_of("1.2.3.4:5"), Some(ip("1.2.3.4")));
    }

    #[test]
    fn bad_ranges_are_refused_with_the_place() {
        for (text, expected) in [
            (
                r#"{"allow": ["10.0.0.0/33"]}"#,
                "allow[0]: \"10.0.0.0/33\": prefix length must be 0..=32",
            ),
            (
                r#"{"deny": ["ok/8"]}"#,
                "deny[0]: \"ok/8\" is not an address or CIDR range",
            ),
        ] {
            assert_eq!(
                AccessRules::parse(text.as_bytes()).err().as_deref(),
                Some(expected)
            );
        }
        assert!(AccessRules::parse(br#"{"allow": [], "mode": 1}"#).is_err());
    }
}
