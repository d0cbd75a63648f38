//! Prefixes (`ipnet::IpNet`, IPv4 or IPv6) as the agent reads them from Nodes and flags: host bits are cleared
//! (`10.244.1.5/24` is `10.244.1.0/24`), and a rejected string gets a message that says what is wrong with it.

use ipnet::IpNet;

/// Parses `ADDRESS/PREFIX` into its network.
pub fn parse(s: &str) -> Result<IpNet, String> {
    let err = |reason: &str| format!("CIDR {s:?}: {reason}");
    let (a, p) = s.split_once('/').ok_or_else(|| err("missing '/prefix'"))?;
    let addr: std::net::IpAddr = a.parse().map_err(|_| err("not an IP address before '/'"))?;
    let prefix: u8 = p
        .parse()
        .map_err(|_| err("prefix length is not a number"))?;
    IpNet::new(addr, prefix)
        .map(|n| n.trunc())
        .map_err(|_| err("prefix length too long for the address family"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_names_what_is_wrong() {
        for (input, want) in [
            ("10.244.1.0/24", "10.244.1.0/24"),
            ("10.244.1.5/24", "10.244.1.0/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00:10:244::7/56", "fd00:10:244::/56"),
        ] {
            assert_eq!(parse(input).unwrap().to_string(), want, "{input}");
        }
        for (input, why) in [
            ("10.244.1.0", "missing '/prefix'"),
            ("10.244.1/24", "not an IP address"),
            ("10.244.1.0/x", "not a number"),
            ("10.0.0.0/33", "too long"),
            ("::/129", "too long"),
        ] {
            let e = parse(input).unwrap_err();
            assert!(e.contains(why) && e.contains(input), "{input}: {e}");
        }
    }
}
