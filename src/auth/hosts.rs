//! The Host allow-list: which names a request may address the server by. A web page can make a browser send
//! requests to a loopback server through a name it controls (DNS rebinding); refusing every Host the operator did
//! not list defeats that. Uses nothing of Duet's.

/// The names a loopback server answers to when no list is configured.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Allowed host names: exact names, `*.example.com` (any subdomain of example.com), or `*` (any Host). Ports and
/// case are ignored, and so is a trailing dot.
#[derive(Debug, Clone)]
pub struct HostAllowList {
    names: Vec<String>,
    any: bool,
}

impl HostAllowList {
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        let names: Vec<String> = names.iter().map(|n| normalise(n.as_ref())).collect();
        let any = names.iter().any(|n| n == "*");
        Self { names, any }
    }

    pub fn loopback() -> Self {
        Self::new(&LOOPBACK_HOSTS)
    }

    /// Whether a request addressed to `host` (a Host header value or URI authority, with or without a port) may
    /// be served. A request without a host is allowed only when any host is.
    pub fn allows(&self, host: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let Some(name) = host.and_then(host_name) else {
            return false;
        };
        let name = normalise(name);
        self.names.iter().any(|allowed| match allowed.strip_prefix("*.") {
            Some(domain) => name.strip_suffix(domain).is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => *allowed == name,
        })
    }
}

/// Checks one configured entry: a host name, an IPv4 address, a bracketed IPv6 address, `*.domain` or `*`, with
/// no port, path or user.
pub fn valid_entry(entry: &str) -> bool {
    if entry == "*" {
        return true;
    }
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The name part of `host[:port]` or `[v6]:port`.
fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        return (rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)).then(|| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => Some(name),
        Some(_) => None,
        None => Some(host),
    }
    .filter(|name| !name.is_empty())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_are_allowed_with_any_port_and_others_are_not() {
        let list = HostAllowList::loopback();
        for ok in ["localhost", "LOCALHOST:8080", "127.0.0.1:1", "[::1]", "[::1]:8080", "localhost."] {
            assert!(list.allows(Some(ok)), "{ok}");
        }
        for bad in ["evil.example", "localhost.evil.example", "127.0.0.2", "[::2]:80", "localhost:http", "", ":80"] {
            assert!(!list.allows(Some(bad)), "{bad}");
        }
        assert!(!list.allows(None), "no Host, no service");
    }

    #[test]
    fn configured_names_wildcards_and_star() {
        let list = HostAllowList::new(&["search.example.com", "*.internal", "duet"]);
        assert!(list.allows(Some("search.example.com:443")));
        assert!(list.allows(Some("duet:8080")));
        assert!(list.allows(Some("a.b.internal")));
        assert!(!list.allows(Some("internal")), "a wildcard needs a subdomain");
        assert!(!list.allows(Some("xinternal")));
        assert!(!list.allows(Some("localhost")), "the list replaces the loopback default");
        let any = HostAllowList::new(&["*"]);
        assert!(any.allows(Some("anything.at.all")) && any.allows(None));
    }

    #[test]
    fn entries_are_names_not_urls() {
        for ok in ["*", "localhost", "10.0.0.1", "[::1]", "*.example.com", "duet"] {
            assert!(valid_entry(ok), "{ok}");
        }
        for bad in ["", "http://x", "x:80", "[zz]", "a/b", "user@host"] {
            assert!(!valid_entry(bad), "{bad}");
        }
    }
}
