//! API keys: making one from the OS random generator, its salted hash (the only form a server ever stores),
//! the compact `name:scopes:hash` entry of the environment, and the key ring that checks a presented key in
//! constant time. Uses nothing of Duet's.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthError, Scope};

/// What every key starts with, so that a leaked one is recognisable (by a secret scanner, in a log).
pub const KEY_PREFIX: &str = "duet_";
/// Random bytes in a key: 256 bits.
const KEY_BYTES: usize = 32;
const SALT_BYTES: usize = 16;
/// Longest `Authorization` token looked at; anything longer cannot be a key.
const MAX_TOKEN_BYTES: usize = 512;

/// A salted SHA-256 of a key, written `sha256:<salt hex>:<digest hex>`.
///
/// A single salted SHA-256 (no slow KDF such as Argon2) is enough here because every key is 256 random bits from
/// the OS generator (`duet keys`): there is no dictionary to try, and a brute force of 2^256 is out of reach
/// however fast the hash. The salt keeps equal keys from having equal hashes across configs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyHash {
    salt: [u8; SALT_BYTES],
    digest: [u8; 32],
}

impl KeyHash {
    /// The hash of `key` under a fresh random salt.
    pub fn new(key: &str) -> Result<Self, AuthError> {
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(AuthError::Random)?;
        Ok(Self::with_salt(salt, key))
    }

    fn with_salt(salt: [u8; SALT_BYTES], key: &str) -> Self {
        Self { salt, digest: digest(&salt, key) }
    }

    /// Whether `key` hashes to this, compared in constant time.
    pub fn matches(&self, key: &str) -> bool {
        bool::from(digest(&self.salt, key).ct_eq(&self.digest))
    }
}

fn digest(salt: &[u8], key: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(key.as_bytes());
    hasher.finalize().into()
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}:{}", hex::encode(self.salt), hex::encode(self.digest))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

impl FromStr for KeyHash {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, AuthError> {
        let bad = || AuthError::Hash(format!("`{s}` is not `sha256:<32 hex salt>:<64 hex digest>` (see `duet keys`)"));
        let rest = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let (salt, digest) = rest.split_once(':').ok_or_else(bad)?;
        let mut out = Self { salt: [0; SALT_BYTES], digest: [0; 32] };
        hex::decode_to_slice(salt, &mut out.salt).map_err(|_| bad())?;
        hex::decode_to_slice(digest, &mut out.digest).map_err(|_| bad())?;
        Ok(out)
    }
}

impl TryFrom<String> for KeyHash {
    type Error = AuthError;
    fn try_from(s: String) -> Result<Self, AuthError> {
        s.parse()
    }
}

impl From<KeyHash> for String {
    fn from(hash: KeyHash) -> String {
        hash.to_string()
    }
}

/// One configured key: a name (for logs and 403 messages), its scopes, and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub name: String,
    pub scopes: BTreeSet<Scope>,
    pub hash: KeyHash,
}

impl KeyEntry {
    /// Whether a key with these scopes may call a route needing `needed` (`admin` implies every scope).
    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes.contains(&needed) || self.scopes.contains(&Scope::Admin)
    }

    /// Checks what serde cannot: a usable name and at least one scope.
    pub fn validate(&self) -> Result<(), AuthError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(AuthError::Entry(format!(
                "key name `{}` must be 1 to 64 letters, digits, `-`, `_` or `.`",
                self.name
            )));
        }
        if self.scopes.is_empty() {
            return Err(AuthError::Entry(format!("key `{}` has no scopes (search, write, admin)", self.name)));
        }
        Ok(())
    }

    /// The entry as a `[[auth.keys]]` table of the config file.
    pub fn to_toml(&self) -> String {
        let scopes: Vec<String> = self.scopes.iter().map(|s| format!("\"{s}\"")).collect();
        format!("[[auth.keys]]\nname = \"{}\"\nscopes = [{}]\nhash = \"{}\"\n", self.name, scopes.join(", "), self.hash)
    }

    /// The entry in the compact form of `DUET_API_KEYS`: `name:scope+scope:hash`.
    pub fn to_compact(&self) -> String {
        let scopes: Vec<String> = self.scopes.iter().map(|s| s.to_string()).collect();
        format!("{}:{}:{}", self.name, scopes.join("+"), self.hash)
    }
}

impl FromStr for KeyEntry {
    type Err = AuthError;

    /// Reads the compact form, `name:scope+scope:sha256:<salt>:<digest>`.
    fn from_str(s: &str) -> Result<Self, AuthError> {
        let mut parts = s.trim().splitn(3, ':');
        let (Some(name), Some(scopes), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Entry(format!("`{s}` is not `name:scope+scope:hash` (see `duet keys`)")));
        };
        let scopes = scopes.split('+').filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
        let entry = KeyEntry { name: name.to_string(), scopes, hash: hash.parse()? };
        entry.validate()?;
        Ok(entry)
    }
}

/// A fresh key (`duet_` and 64 hex digits: 256 bits from the OS random generator) and its entry. The key itself
/// is shown once to whoever made it; only the entry is configured.
pub fn generate(name: &str, scopes: BTreeSet<Scope>) -> Result<(String, KeyEntry), AuthError> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(AuthError::Random)?;
    let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    let entry = KeyEntry { name: name.to_string(), scopes, hash: KeyHash::new(&key)? };
    entry.validate()?;
    Ok((key, entry))
}

/// What a request's credentials amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// A known key that holds the scope (or no scope was needed).
    Allowed(&'a KeyEntry),
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is no configured key.
    Unknown,
    /// A known key without the scope.
    Forbidden(&'a KeyEntry),
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    entries: Vec<KeyEntry>,
}

impl KeyRing {
    pub fn new(entries: Vec<KeyEntry>) -> Self {
        Self { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key an `Authorization` header value names. Every entry is hashed and compared (no early exit), so
    /// the time taken does not depend on which entry, if any, matches.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Result<&KeyEntry, Verdict<'_>> {
        let token = authorization.and_then(bearer_token).ok_or(Verdict::Missing)?;
        let mut found = None;
        for entry in &self.entries {
            if entry.hash.matches(token) && found.is_none() {
                found = Some(entry);
            }
        }
        found.ok_or(Verdict::Unknown)
    }

    /// The verdict on a request needing `needed` (`None`: any known key will do).
    pub fn check(&self, authorization: Option<&[u8]>, needed: Option<Scope>) -> Verdict<'_> {
        match self.identify(authorization) {
            Ok(entry) if needed.is_none_or(|scope| entry.allows(scope)) => Verdict::Allowed(entry),
            Ok(entry) => Verdict::Forbidden(entry),
            Err(verdict) => verdict,
        }
    }
}

/// The token of `Bearer <token>` (the scheme in any case), if that is what the header holds.
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN_BYTES).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[Scope]) -> BTreeSet<Scope> {
        list.iter().copied().collect()
    }

    #[test]
    fn a_generated_key_is_256_random_bits_and_only_its_hash_matches_it() {
        let (key, entry) = generate("ci", scopes(&[Scope::Write])).unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64, "{key}");
        assert!(entry.hash.matches(&key));
        assert!(!entry.hash.matches(&key[..key.len() - 1]));
        assert!(!entry.to_toml().contains(&key) && !entry.to_compact().contains(&key), "never the key itself");
        let (other, again) = generate("ci", scopes(&[Scope::Write])).unwrap();
        assert_ne!(key, other);
        assert_ne!(entry.hash.salt, again.hash.salt, "a fresh salt per key");
    }

    #[test]
    fn hashes_and_compact_entries_round_trip_and_bad_ones_are_refused() {
        let (key, entry) = generate("ingest.v2", scopes(&[Scope::Write, Scope::Search])).unwrap();
        let compact = entry.to_compact();
        assert!(compact.starts_with("ingest.v2:search+write:sha256:"), "{compact}");
        let parsed: KeyEntry = compact.parse().unwrap();
        assert_eq!(parsed, entry);
        assert!(parsed.hash.matches(&key));
        let table: toml::Table = toml::from_str(&entry.to_toml()).unwrap();
        let from_toml: KeyEntry = table["auth"]["keys"][0].clone().try_into().unwrap();
        assert_eq!(from_toml, entry);

        for bad in [
            "ci:search",
            "ci::sha256:00:00",
            "ci:read:sha256:00:00",
            "c i:search:sha256:00:00",
            "ci:search:md5:00:00",
            "ci:search:sha256:0011:zz",
        ] {
            assert!(bad.parse::<KeyEntry>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ring_tells_missing_unknown_forbidden_and_allowed_apart() {
        let (search_key, search) = generate("reader", scopes(&[Scope::Search])).unwrap();
        let (admin_key, admin) = generate("root", scopes(&[Scope::Admin])).unwrap();
        let ring = KeyRing::new(vec![search.clone(), admin.clone()]);
        let header = |key: &str| format!("Bearer {key}").into_bytes();
        assert_eq!(ring.check(None, Some(Scope::Search)), Verdict::Missing);
        assert_eq!(ring.check(Some(b"Basic dXNlcjpwdw=="), Some(Scope::Search)), Verdict::Missing);
        assert_eq!(ring.check(Some(&header("duet_nope")), Some(Scope::Search)), Verdict::Unknown);
        assert_eq!(ring.check(Some(&header(&search_key)), Some(Scope::Search)), Verdict::Allowed(&search));
        assert_eq!(ring.check(Some(&header(&search_key)), Some(Scope::Write)), Verdict::Forbidden(&search));
        assert_eq!(ring.check(Some(&header(&search_key)), None), Verdict::Allowed(&search));
        let lower = format!("bearer  {admin_key} ").into_bytes();
        for scope in [Scope::Search, Scope::Write, Scope::Admin] {
            assert_eq!(ring.check(Some(&lower), Some(scope)), Verdict::Allowed(&admin), "admin implies {scope}");
        }
    }
}
