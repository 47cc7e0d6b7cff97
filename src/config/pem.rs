//! PEM files the profile names (`sip.tls_cert`, `sip.tls_key`,
//! `sip.tls_ca`): read and checked here, so `check-config` finds a missing
//! or wrong file the same way `run` does, before a listener is opened.

use std::path::{Path, PathBuf};

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// At least one certificate (a chain, or trust anchors).
    Certificate,
    PrivateKey,
}

impl std::fmt::Display for PemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemKind::Certificate => "certificate",
            PemKind::PrivateKey => "private key",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{}: {source} (run `agentline gen-cert` for a self-signed development pair)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: expected a PEM {kind}", path.display())]
    Content { path: PathBuf, kind: PemKind },
}

/// Reads `path` and checks it holds a PEM `kind`; returns its bytes.
pub fn read_pem(path: &Path, kind: PemKind) -> Result<Vec<u8>, PemError> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let ok = match kind {
        PemKind::PrivateKey => rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem).is_ok(),
        PemKind::Certificate => rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .next()
            .is_some_and(|c| c.is_ok()),
    };
    if ok {
        Ok(pem)
    } else {
        Err(PemError::Content {
            path: path.to_path_buf(),
            kind,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_wrong_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.crt");
        let e = read_pem(&missing, PemKind::Certificate)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.crt") && e.contains("gen-cert"), "{e}");
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "not pem").unwrap();
        let e = read_pem(&junk, PemKind::PrivateKey)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("junk.key: expected a PEM private key"), "{e}");
    }
}
