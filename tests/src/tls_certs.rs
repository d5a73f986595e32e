//! A certificate authority made by the test, and certificates it signs, as PEM files for
//! PostgreSQL servers with `ssl = on` and for clients' `sslrootcert`, `sslcert`, `sslkey`.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A certificate and its private key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A throwaway CA in its own temporary directory (removed on drop).
pub struct TestCa {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (for `sslrootcert` and the server's `ssl_ca_file`).
    pub ca_file: PathBuf,
}

impl TestCa {
    pub fn new() -> Result<TestCa> {
        let dir = tempfile::tempdir().context("creating the CA's directory")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, issuer.pem()).context("writing the CA certificate")?;
        Ok(TestCa {
            dir,
            issuer,
            ca_file,
        })
    }

    /// A certificate for `common_name`, valid for the host names and IP addresses in
    /// `names`, signed by this CA.
    pub fn issue(&self, common_name: &str, names: &[&str]) -> Result<CertFiles> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let write = |name: String, text: String| -> Result<PathBuf> {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(CertFiles {
            cert: write(format!("{common_name}.crt"), cert.pem())?,
            key: write(format!("{common_name}.key"), key.serialize_pem())?,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// How a test cluster serves TLS: its certificate, and whether clients must present one
/// signed by the CA (`clientcert=verify-full`, the certificate's CN naming the user).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: CertFiles,
    pub ca_file: PathBuf,
    pub client_cert: bool,
}
