//! Who may use the console: the admin token (Bearer) or a session cookie
//! signed with a key derived from it, plus CSRF tokens bound to the cookie.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::ingest_secret::IngestSecret;

/// The session cookie's name.
pub const COOKIE: &str = "hexwatch_session";
/// How long a console session lasts.
const SESSION_MS: i64 = 12 * 3600 * 1000;
/// Longest name a person can give at login.
const MAX_NAME: usize = 64;

pub struct Auth {
    token: IngestSecret,
    key: [u8; 32],
    secure_cookie: bool,
}

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Who {
    /// A session: the name given at login, and the cookie value (for CSRF).
    Session { name: String, cookie: String },
    /// An API client with the token.
    Bearer,
}

impl Who {
    /// The name recorded for a triage: the session's, or what an API client says.
    pub fn name(&self, claimed: Option<&str>) -> String {
        match self {
            Who::Session { name, .. } => name.clone(),
            Who::Bearer => claimed
                .map(|c| c.trim().chars().take(MAX_NAME).collect::<String>())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "api".into()),
        }
    }
}

impl Auth {
    pub fn new(token: &str, secure_cookie: bool) -> Auth {
        let mut h = Sha256::new();
        h.update(b"hexwatch console session key\0");
        h.update(token.as_bytes());
        Auth {
            token: IngestSecret::new(token.as_bytes()),
            key: h.finalize().into(),
            secure_cookie,
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        hex::encode(m.finalize().into_bytes())
    }

    /// Whether `presented` is the admin token (constant time).
    pub fn token_matches(&self, presented: &str) -> bool {
        self.token.matches(presented.as_bytes())
    }

    /// A new session cookie value for `name`.
    pub fn session(&self, name: &str, now_ms: i64) -> String {
        let name: String = name.trim().chars().take(MAX_NAME).collect();
        let name = if name.is_empty() {
            "admin".into()
        } else {
            name
        };
        let expires = (now_ms + SESSION_MS).to_string();
        let name_hex = hex::encode(name.as_bytes());
        let mac = self.mac(&[b"session", expires.as_bytes(), name_hex.as_bytes()]);
        format!("{expires}.{name_hex}.{mac}")
    }

    /// The `Set-Cookie` header for a session value (empty value: log out).
    pub fn set_cookie(&self, value: &str) -> String {
        let max_age = if value.is_empty() {
            0
        } else {
            SESSION_MS / 1000
        };
        format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }

    /// The session a `Cookie` header carries, if valid and not expired.
    pub fn from_cookie(&self, header: Option<&str>, now_ms: i64) -> Option<Who> {
        let value = header?
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v)?;
        let mut parts = value.splitn(3, '.');
        let (expires, name_hex, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let want = self.mac(&[b"session", expires.as_bytes(), name_hex.as_bytes()]);
        if !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        if expires.parse::<i64>().ok()? < now_ms {
            return None;
        }
        let name = String::from_utf8(hex::decode(name_hex).ok()?).ok()?;
        Some(Who::Session {
            name,
            cookie: value.to_string(),
        })
    }

    /// A session cookie's signature: what names it when it is logged out.
    pub fn signature(cookie: &str) -> &str {
        cookie.rsplit('.').next().unwrap_or("")
    }

    /// When a session cookie expires (unix ms; 0 when unreadable).
    pub fn expiry(cookie: &str) -> i64 {
        cookie
            .split('.')
            .next()
            .and_then(|e| e.parse().ok())
            .unwrap_or(0)
    }

    /// Who a request is from by its headers: a Bearer token, else a session
    /// cookie (signature and expiry; logouts are checked by the console).
    pub fn who(&self, authorization: Option<&str>, cookie: Option<&str>) -> Option<Who> {
        if let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            return self.token_matches(token.trim()).then_some(Who::Bearer);
        }
        self.from_cookie(cookie, hexwatch_storage::now_ms())
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, cookie: &str) -> String {
        self.mac(&[b"csrf", cookie.as_bytes()])
    }

    pub fn csrf_ok(&self, cookie: &str, presented: &str) -> bool {
        bool::from(self.csrf(cookie).as_bytes().ct_eq(presented.as_bytes()))
    }

    /// Checks an API request: a Bearer token, or a session cookie (with the
    /// CSRF token in `X-CSRF-Token` when the request changes something).
    pub fn check(
        &self,
        authorization: Option<String>,
        cookie: Option<String>,
        csrf: Option<String>,
        changes: bool,
    ) -> Result<Who, ApiError> {
        if let Some(a) = authorization {
            let token = a.strip_prefix("Bearer ").ok_or(ApiError::Unauthorized)?;
            return if self.token_matches(token.trim()) {
                Ok(Who::Bearer)
            } else {
                Err(ApiError::Unauthorized)
            };
        }
        let who = self
            .from_cookie(cookie.as_deref(), hexwatch_storage::now_ms())
            .ok_or(ApiError::Unauthorized)?;
        if changes {
            let Who::Session { cookie, .. } = &who else {
                unreachable!("a cookie gives a session")
            };
            if !self.csrf_ok(cookie, csrf.as_deref().unwrap_or("")) {
                return Err(ApiError::Forbidden(
                    "a session needs its CSRF token (X-CSRF-Token) to change anything".into(),
                ));
            }
        }
        Ok(who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_bound_and_expire() {
        let a = Auth::new("0123456789abcdef-token", false);
        let v = a.session("ana <script>", 1_000);
        let header = format!("other=1; {COOKIE}={v}");
        match a.from_cookie(Some(&header), 2_000) {
            Some(Who::Session { name, cookie }) => {
                assert_eq!(name, "ana <script>");
                assert!(a.csrf_ok(&cookie, &a.csrf(&v)));
                assert!(!a.csrf_ok(&cookie, "00"));
            }
            other => panic!("{other:?}"),
        }
        // Expired, tampered with, or signed with another token: no session.
        assert!(a
            .from_cookie(Some(&header), 1_000 + SESSION_MS + 1)
            .is_none());
        let forged = v.replacen(&hex::encode("ana"), &hex::encode("eve"), 1);
        assert!(a
            .from_cookie(Some(&format!("{COOKIE}={forged}")), 2_000)
            .is_none());
        let other = Auth::new("another-token-0123456789", false);
        assert!(other.from_cookie(Some(&header), 2_000).is_none());
        assert!(a.set_cookie(&v).contains("HttpOnly; SameSite=Strict"));
    }
}
