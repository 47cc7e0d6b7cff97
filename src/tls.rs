//! TLS material: `agentline gen-cert` writes a self-signed development pair
//! into `certs/` (production deployments put their CA-issued chain there).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate the certificate: {0}")]
    Generate(String),
}

/// File names inside the certs folder, matching the profile defaults
/// `sip.tls_cert` / `sip.tls_key`.
pub const CERT_FILE: &str = "agentline.crt";
pub const KEY_FILE: &str = "agentline.key";

/// A self-signed certificate (PEM) and its PKCS#8 key (PEM) valid for
/// `names` (DNS names or IP addresses), for ten years.
pub fn self_signed(names: &[String]) -> Result<(String, String), CertError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CertError::Generate(e.to_string()))?;
    for n in names {
        let san = match n.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                n.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| CertError::Generate(format!("`{n}`: {e}")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    let cn = names.first().cloned().unwrap_or_else(|| "agentline".into());
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "agentline (self-signed)");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = rcgen::KeyPair::generate().map_err(|e| CertError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `agentline.crt` and `agentline.key` (mode 0600) into `dir`.
pub fn write_pair(
    dir: &Path,
    names: &[String],
    force: bool,
) -> Result<(PathBuf, PathBuf), CertError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    for p in [&cert_path, &key_path] {
        if p.exists() && !force {
            return Err(CertError::Exists(p.clone()));
        }
    }
    let (cert, key) = self_signed(names)?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    std::fs::write(&cert_path, cert).map_err(write_err(&cert_path))?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(write_err(&key_path))?;
        f.write_all(key.as_bytes()).map_err(write_err(&key_path))?;
    }
    Ok((cert_path, key_path))
}

/// Names a development certificate covers by default: loopback, this host's
/// name and its outward address.
pub fn default_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    if let Ok(ip) = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    }) {
        let ip = ip.ip().to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_is_written_and_parses_as_pem() {
        let dir = tempfile::tempdir().expect("tmp");
        let (c, k) = write_pair(dir.path(), &["localhost".into(), "127.0.0.1".into()], false)
            .expect("written");
        let cert = std::fs::read_to_string(&c).expect("cert");
        let key = std::fs::read_to_string(&k).expect("key");
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY-----"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&k).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "key readable by its owner only");
        assert!(matches!(
            write_pair(dir.path(), &["localhost".into()], false),
            Err(CertError::Exists(_))
        ));
        write_pair(dir.path(), &["localhost".into()], true).expect("--force replaces");
    }
}
