//! Named console users: each signs in with their own password, kept in the
//! config as an Argon2id hash (`hexwatch hash-password` makes one), so the
//! history of every incident names a person. The admin token stays for the
//! API; with users configured it no longer opens the console.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

pub use crate::config::users::{check_hash, BadHash, ConsoleUser};

/// A new Argon2id hash of `password` (the crate's defaults: 19 MiB, two passes).
pub fn hash_password(password: &str) -> Result<String, BadHash> {
    let salt =
        SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| BadHash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| BadHash(e.to_string()))
}

/// The user `name` if `password` is theirs. Every attempt costs one Argon2
/// verification, for a name that exists or not, so the time taken does not
/// tell which names exist.
pub fn verify(users: &[ConsoleUser], name: &str, password: &str) -> Option<String> {
    // A hash of nothing anyone can type, for names that do not exist.
    const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$5Ps2j4yWQyXn4TSBWwFi2nFPd0cW6T3KZJcAq8Tw4Zk";
    let user = users.iter().find(|u| u.name == name);
    let hash = user.map_or(DECOY, |u| u.password_hash.as_str());
    let parsed = PasswordHash::new(hash).ok()?;
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    user.filter(|_| ok).map(|u| u.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_wrong_passwords_or_names_do_not() {
        let hash = hash_password("correct horse battery staple").unwrap();
        check_hash(&hash).unwrap();
        let users = vec![ConsoleUser {
            name: "ana@acme.example".into(),
            password_hash: hash,
        }];
        assert_eq!(
            verify(&users, "ana@acme.example", "correct horse battery staple").as_deref(),
            Some("ana@acme.example")
        );
        assert_eq!(verify(&users, "ana@acme.example", "wrong"), None);
        assert_eq!(
            verify(&users, "bob@acme.example", "correct horse battery staple"),
            None
        );
        assert!(check_hash("plain-text-password").is_err());
    }
}
