//! Reading TLS settings: libpq's parameters, environment variables and defaults, and the
//! settings refused with the URL named and its password hidden.

use super::*;

fn settings(url: &str, env: &[(&str, &str)], home: Option<&Path>) -> Result<TlsSettings, TlsError> {
    let dsn = Dsn::parse(url).expect("test URL");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    TlsSettings::from_sources(
        &dsn,
        &|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
        home,
    )
}

/// Why `url` (without environment) is refused.
fn refusal(url: &str, home: Option<&Path>) -> String {
    settings(url, &[], home).unwrap_err().to_string()
}

#[test]
fn libpq_defaults_and_environment() {
    let s = settings("postgres://u:pw@h/db", &[], None).unwrap();
    assert_eq!(s.mode, SslMode::Prefer);
    assert_eq!(s.channel_binding, ChannelBinding::Prefer);
    assert!(s.client_config().is_some());
    let s = settings("postgres://u@h/db", &[("PGSSLMODE", "disable")], None).unwrap();
    assert_eq!(s.mode, SslMode::Disable);
    assert!(s.client_config().is_none());
    // The URL wins over the environment.
    let s = settings(
        "postgres://u@h/db?sslmode=require",
        &[("PGSSLMODE", "disable")],
        None,
    )
    .unwrap();
    assert_eq!(s.mode, SslMode::Require);
    assert!(s.root_cert.is_none());
}

#[test]
fn default_files_under_home_are_used_when_present() {
    let home = tempfile::tempdir().unwrap();
    let dot = home.path().join(".postgresql");
    std::fs::create_dir(&dot).unwrap();
    // Without root.crt, verify-ca has nothing to check against.
    let e = refusal(
        "postgres://u:secret@h/db?sslmode=verify-ca",
        Some(home.path()),
    );
    assert!(e.contains("sslrootcert") && e.contains("root.crt"), "{e}");
    assert!(!e.contains("secret"), "{e}");
    std::fs::write(dot.join("root.crt"), "not a certificate").unwrap();
    let e = refusal("postgres://u@h/db?sslmode=verify-full", Some(home.path()));
    assert!(e.contains("holds no PEM certificate"), "{e}");
}

#[test]
fn what_cannot_be_honoured_is_refused_naming_the_url() {
    for (url, needle) in [
        (
            "postgres://u:secret@h/db?sslmode=verify",
            "sslmode=\"verify\" is not one of",
        ),
        (
            "postgres://u:secret@h/db?channel_binding=yes",
            "channel_binding=\"yes\"",
        ),
        (
            "postgres://u:secret@h/db?sslcrl=/x",
            "sslcrl is not supported",
        ),
        (
            "postgres://u:secret@h/db?sslpassword=x",
            "sslpassword is not supported",
        ),
        (
            "postgres://u:secret@h/db?sslrootcert=system&sslmode=verify-full",
            "sslrootcert=system",
        ),
        (
            "postgres://u:secret@h/db?sslmode=disable&channel_binding=require",
            "channel_binding=require needs TLS",
        ),
        (
            "postgres://u:secret@h/db?sslmode=require&sslrootcert=/no/such/ca.pem",
            "reading the root certificate /no/such/ca.pem",
        ),
    ] {
        let e = refusal(url, None);
        assert!(e.contains(needle), "{url}: {e}");
        assert!(e.starts_with("postgres://u:***@h:5432/db"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }
}

#[test]
fn tls_parameters_are_stripped_for_tokio_postgres() {
    assert_eq!(
        strip_tls_params(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca&application_name=x"
        ),
        "postgres://u@h/db?application_name=x"
    );
    assert_eq!(
        strip_tls_params("postgres://u@h/db?sslmode=require"),
        "postgres://u@h/db"
    );
    assert_eq!(strip_tls_params("postgres://u@h/db"), "postgres://u@h/db");
}
