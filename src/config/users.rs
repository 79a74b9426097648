//! `[[ui.users]]`: the people who sign in to the console, each with an
//! Argon2 password hash (the console verifies; see `console::users`).

use argon2::password_hash::PasswordHash;

/// A configured user.
#[derive(Clone)]
pub struct ConsoleUser {
    pub name: String,
    /// The Argon2 hash in PHC form (`$argon2id$v=19$...`).
    pub password_hash: String,
}

impl std::fmt::Debug for ConsoleUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleUser")
            .field("name", &self.name)
            .finish()
    }
}

/// Why a configured hash cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("not an Argon2 password hash in PHC form ($argon2id$...): {0}; make one with `hexwatch hash-password`")]
pub struct BadHash(pub String);

/// Checks a configured hash.
pub fn check_hash(hash: &str) -> Result<(), BadHash> {
    let parsed = PasswordHash::new(hash).map_err(|e| BadHash(e.to_string()))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(BadHash(format!("algorithm {}", parsed.algorithm)));
    }
    Ok(())
}
