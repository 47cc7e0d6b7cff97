//! `[[users]]`: local users (phones registering to us) and their passwords,
//! including the ones generated on first start and kept in the state
//! directory.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::{Config, ConfigError, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    name: String,
    password: Option<String>,
    password_env: Option<String>,
}

/// Where a local user's password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    Inline(String),
    Env(String),
    /// None given: generated on first start and kept in the state directory.
    Generated,
}

#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    pub password: PasswordSource,
}

/// `[[users]]`, validated: names are SIP-safe and unique, at most one
/// password source each.
pub(super) fn validate(raw: Vec<RawUser>, cx: &Ctx) -> Result<Vec<UserConfig>, ConfigError> {
    let mut users = Vec::new();
    let mut names = HashSet::new();
    for (i, u) in raw.into_iter().enumerate() {
        let key = format!("users[{i}]");
        if u.name.is_empty()
            || !u
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
        {
            return Err(cx.invalid(
                format!("{key}.name"),
                format!("expected letters, digits or ._-+, got `{}`", u.name),
            ));
        }
        if !names.insert(u.name.clone()) {
            return Err(cx.invalid(
                format!("{key}.name"),
                format!("user `{}` is defined twice", u.name),
            ));
        }
        let password = match (u.password, u.password_env) {
            (Some(_), Some(_)) => {
                return Err(cx.invalid(
                    format!("{key}.password"),
                    "give either password or password_env, not both",
                ))
            }
            (Some(p), None) if p.is_empty() => {
                return Err(cx.invalid(
                    format!("{key}.password"),
                    "an empty password is not allowed; omit it to have one generated",
                ))
            }
            (Some(p), None) => PasswordSource::Inline(p),
            (None, Some(v)) => PasswordSource::Env(v),
            (None, None) => PasswordSource::Generated,
        };
        users.push(UserConfig {
            name: u.name,
            password,
        });
    }
    Ok(users)
}

/// A local user with the password it authenticates with.
#[derive(Clone)]
pub struct Credential {
    pub name: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Credential")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Resolves every user's password: inline, from the environment, or from the
/// state directory (generating and storing one on first start). Returns the
/// credentials and the names whose password was generated just now, so the
/// caller can print them once.
pub fn resolve_credentials(
    cfg: &Config,
) -> Result<(Vec<Credential>, Vec<Credential>), ConfigError> {
    let (all, fresh) = prepare_credentials(cfg)?;
    store_generated(cfg, &fresh)?;
    Ok((all, fresh))
}

/// [`resolve_credentials`] without writing anything: the passwords
/// generated now (the second list) are only kept in memory until
/// [`store_generated`]. The server stores and announces them once its
/// listeners are bound, so a start that fails (a busy port) leaves no
/// password behind that nobody was told.
pub fn prepare_credentials(
    cfg: &Config,
) -> Result<(Vec<Credential>, Vec<Credential>), ConfigError> {
    let mut out = Vec::new();
    let mut fresh = Vec::new();
    for (i, u) in cfg.users.iter().enumerate() {
        let password = match &u.password {
            PasswordSource::Inline(p) => p.clone(),
            PasswordSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => v,
                _ => {
                    return Err(ConfigError::Invalid {
                        origin: cfg.origin.clone(),
                        key: format!("users[{i}].password_env"),
                        message: format!("environment variable `{var}` is not set or empty"),
                    })
                }
            },
            PasswordSource::Generated => {
                let path = cfg.state_dir.join("credentials").join(&u.name);
                match std::fs::read_to_string(&path) {
                    Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
                    _ => {
                        let p = generate_password();
                        fresh.push(Credential {
                            name: u.name.clone(),
                            password: p.clone(),
                        });
                        p
                    }
                }
            }
        };
        out.push(Credential {
            name: u.name.clone(),
            password,
        });
    }
    Ok((out, fresh))
}

/// Writes generated passwords to `<state dir>/credentials/<user>` (0600).
pub fn store_generated(cfg: &Config, fresh: &[Credential]) -> Result<(), ConfigError> {
    let dir = cfg.state_dir.join("credentials");
    for c in fresh {
        write_secret(&dir, &dir.join(&c.name), &c.password)?;
    }
    Ok(())
}

fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn write_secret(dir: &Path, path: &Path, secret: &str) -> Result<(), ConfigError> {
    let err = |source| ConfigError::State {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(secret.as_bytes()).map_err(err)?;
    }
    #[cfg(not(unix))]
    std::fs::write(path, secret).map_err(err)?;
    Ok(())
}
