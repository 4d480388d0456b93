//! Who may call the server: the scopes an API key holds, the `[auth]` settings (keys, which operational
//! endpoints stay open, the Host allow-list, CORS origins) and the rule that ties them to the listen address —
//! auth is off only on loopback; a server reachable from elsewhere refuses to start without keys unless told to.
//! [`keys`] makes, hashes and checks keys; [`hosts`] matches Host headers. Uses nothing of Duet's: the API
//! enforces these decisions, the command line makes keys with them.

pub mod hosts;
pub mod keys;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use hosts::HostAllowList;
pub use keys::{KeyEntry, KeyHash, KeyRing, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid API key entry: {0}")]
    Entry(String),
    #[error("invalid API key hash: {0}")]
    Hash(String),
    #[error("unknown scope `{0}`: scopes are search, write and admin")]
    Scope(String),
    #[error("[auth] {0}")]
    Settings(String),
    #[error("the OS random generator failed: {0}")]
    Random(getrandom::Error),
}

/// What a key may do. `admin` implies `write` and `search`; `write` and `search` are independent (a key that
/// writes and reads lists both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Search, embed, feedback, and every read (documents, models, experiments, evaluation jobs).
    Search,
    /// Upsert and delete documents.
    Write,
    /// Experiments (create, change status), evaluation runs, and anything else that changes state.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Search => "search",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, AuthError> {
        match s.trim() {
            "search" => Ok(Scope::Search),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(AuthError::Scope(other.to_string())),
        }
    }
}

/// The operational endpoints: probes, metrics and the API description. Each is open (no key) or keyed (any
/// configured key, whatever its scopes), as `open_ops` says.
pub const OPS_ENDPOINTS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.yaml"];

/// The `[auth]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// API keys as salted hashes (`duet keys` makes one). None: auth is off, which only a loopback `listen`
    /// allows unless `allow_unauthenticated`.
    pub keys: Vec<KeyEntry>,
    /// Operational endpoints answered without a key (default: all four; `[]` keys them all).
    pub open_ops: Vec<String>,
    /// Serve a non-loopback `listen` without keys: anyone who reaches the port may write.
    pub allow_unauthenticated: bool,
    /// Host names requests may address the server by (default: localhost, 127.0.0.1, [::1]); `*.domain` for
    /// subdomains, `["*"]` for any. Required when `listen` is not loopback.
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins allowed by CORS, e.g. `https://app.example.com`, or `["*"]` (default: none, CORS off).
    pub cors_origins: Vec<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            open_ops: OPS_ENDPOINTS.iter().map(|p| p.to_string()).collect(),
            allow_unauthenticated: false,
            allowed_hosts: None,
            cors_origins: Vec::new(),
        }
    }
}

impl AuthSettings {
    /// Whether requests need a key: exactly when keys are configured.
    pub fn enforced(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn key_ring(&self) -> KeyRing {
        KeyRing::new(self.keys.clone())
    }

    pub fn host_allow_list(&self) -> HostAllowList {
        match &self.allowed_hosts {
            Some(names) => HostAllowList::new(names),
            None => HostAllowList::loopback(),
        }
    }

    /// Checks the settings against the address the server will listen on.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), AuthError> {
        let mut names = BTreeSet::new();
        for key in &self.keys {
            key.validate()?;
            if !names.insert(key.name.as_str()) {
                return Err(AuthError::Entry(format!("two keys are named `{}`", key.name)));
            }
        }
        let exposed = !listen.ip().is_loopback();
        if exposed && self.keys.is_empty() && !self.allow_unauthenticated {
            return Err(AuthError::Settings(format!(
                "listen = {listen} is not a loopback address and no API keys are configured, so anyone who can \
                 reach the port could write and delete documents. Add keys (`duet keys` makes one; put its entry \
                 in [[auth.keys]] or DUET_API_KEYS), or set auth.allow_unauthenticated = true \
                 (--allow-unauthenticated, DUET_ALLOW_UNAUTHENTICATED=true) to serve without them"
            )));
        }
        match &self.allowed_hosts {
            None if exposed => {
                return Err(AuthError::Settings(format!(
                    "listen = {listen} is not a loopback address: set auth.allowed_hosts (--allowed-hosts, \
                     DUET_ALLOWED_HOSTS) to the host names clients reach the server by, or [\"*\"] to accept \
                     any Host header"
                )))
            }
            Some(list) if list.is_empty() => {
                return Err(AuthError::Settings("allowed_hosts is empty: no request could be served".into()))
            }
            Some(list) => {
                if let Some(bad) = list.iter().find(|h| !hosts::valid_entry(h)) {
                    return Err(AuthError::Settings(format!(
                        "allowed_hosts entry `{bad}` is not a host name, an IP address, `*.domain` or `*` \
                         (no scheme, port or path)"
                    )));
                }
            }
            None => {}
        }
        if let Some(bad) = self.open_ops.iter().find(|p| !OPS_ENDPOINTS.contains(&p.as_str())) {
            return Err(AuthError::Settings(format!(
                "open_ops entry `{bad}` is not one of {}",
                OPS_ENDPOINTS.join(", ")
            )));
        }
        if let Some(bad) = self.cors_origins.iter().find(|o| !valid_origin(o)) {
            return Err(AuthError::Settings(format!(
                "cors_origins entry `{bad}` is not an origin such as `https://app.example.com` or \
                 `http://localhost:5173` (scheme, host, optional port; no path), nor `*`"
            )));
        }
        Ok(())
    }
}

/// `*`, or `http(s)://host[:port]` with no path, as a browser sends it in `Origin`.
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some(rest) = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) else {
        return false;
    };
    let (host, port) = match rest.find(']') {
        Some(end) if rest.starts_with('[') => match &rest[end + 1..] {
            "" => (&rest[..=end], None),
            after => (&rest[..=end], Some(after.strip_prefix(':').unwrap_or(""))),
        },
        _ => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let host_ok = hosts::valid_entry(host) && !host.starts_with('*');
    host_ok && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn with_key() -> AuthSettings {
        let (_, entry) = keys::generate("ops", [Scope::Search].into()).unwrap();
        AuthSettings { keys: vec![entry], ..AuthSettings::default() }
    }

    #[test]
    fn auth_is_off_by_default_only_on_loopback() {
        let open = AuthSettings::default();
        assert!(!open.enforced());
        open.validate(addr("127.0.0.1:8080")).unwrap();
        open.validate(addr("[::1]:8080")).unwrap();
        let err = open.validate(addr("0.0.0.0:8080")).unwrap_err().to_string();
        assert!(err.contains("no API keys") && err.contains("allow_unauthenticated"), "{err}");
        let hosts = Some(vec!["duet".to_string()]);
        let allowed = AuthSettings { allow_unauthenticated: true, allowed_hosts: hosts.clone(), ..open.clone() };
        allowed.validate(addr("0.0.0.0:8080")).unwrap();
        let keyed = AuthSettings { allowed_hosts: hosts, ..with_key() };
        assert!(keyed.enforced());
        keyed.validate(addr("[::]:8080")).unwrap();
    }

    #[test]
    fn an_exposed_server_must_name_its_hosts() {
        let err = with_key().validate(addr("0.0.0.0:8080")).unwrap_err().to_string();
        assert!(err.contains("allowed_hosts"), "{err}");
        let star = AuthSettings { allowed_hosts: Some(vec!["*".into()]), ..with_key() };
        star.validate(addr("0.0.0.0:8080")).unwrap();
        let bad = AuthSettings { allowed_hosts: Some(vec!["http://duet:8080".into()]), ..with_key() };
        assert!(bad.validate(addr("127.0.0.1:1")).unwrap_err().to_string().contains("http://duet:8080"));
    }

    #[test]
    fn open_ops_cors_origins_and_key_names_are_checked() {
        let ops = AuthSettings { open_ops: vec!["/v1/search".into()], ..AuthSettings::default() };
        assert!(ops.validate(addr("127.0.0.1:1")).unwrap_err().to_string().contains("/v1/search"));
        for good in ["*", "https://app.example.com", "http://localhost:5173", "http://[::1]:3000"] {
            let cors = AuthSettings { cors_origins: vec![good.into()], ..AuthSettings::default() };
            cors.validate(addr("127.0.0.1:1")).unwrap();
        }
        for bad in ["app.example.com", "https://app.example.com/", "https://x:port", "ftp://x"] {
            let cors = AuthSettings { cors_origins: vec![bad.into()], ..AuthSettings::default() };
            assert!(cors.validate(addr("127.0.0.1:1")).is_err(), "{bad}");
        }
        let mut twice = with_key();
        twice.keys.push(twice.keys[0].clone());
        assert!(twice.validate(addr("127.0.0.1:1")).unwrap_err().to_string().contains("two keys"));
    }

    #[test]
    fn scopes_parse_by_name() {
        assert_eq!("write".parse::<Scope>().unwrap(), Scope::Write);
        assert!("read".parse::<Scope>().is_err());
        assert_eq!(Scope::Admin.to_string(), "admin");
    }
}
