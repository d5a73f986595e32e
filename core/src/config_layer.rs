//! Layered configuration: a TOML file, then `SWITCHYARD_*` environment variables, then
//! command-line flags, merged into one table and deserialized into a binary's config type.
//!
//! Every bad value is reported with its key and where it came from, not only the first:
//! after a failure the offending key is set aside and deserialization runs again.

use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use toml::{Table, Value};

/// Where a configuration value came from, so an error can point the user at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(String),
    Env(String),
    Flag(String),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "config file {p}"),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(n) => write!(f, "flag --{n}"),
            Origin::Default => write!(f, "default"),
        }
    }
}

/// One bad configuration value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `listen` or `users[0].password`.
    pub key: String,
    pub origin: Origin,
    pub message: String,
}

impl ConfigError {
    /// An error about `key`, with where its value came from.
    pub fn at(key: &str, origin_of: &dyn Fn(&str) -> Origin, message: String) -> ConfigError {
        ConfigError {
            key: key.to_string(),
            origin: origin_of(key),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{} (from {})", self.message, self.origin)
        } else {
            write!(f, "{}: {} (from {})", self.key, self.message, self.origin)
        }
    }
}

/// All the bad values found; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Checks that go beyond types (ranges, combinations); push one error per bad value.
/// Reports `old` and `new` when they are not PostgreSQL URLs (every binary takes both).
pub fn validate_urls(
    old: &str,
    new: &str,
    errors: &mut Vec<ConfigError>,
    origin_of: &dyn Fn(&str) -> Origin,
) {
    for (key, url) in [("old", old), ("new", new)] {
        let problem = match crate::dsn::Dsn::parse(url) {
            Err(e) => Some(e.to_string()),
            // TLS settings that cannot be honoured fail here, before anything connects.
            Ok(dsn) => crate::tls::settings_for(&dsn).err().map(|e| e.to_string()),
        };
        if let Some(message) = problem {
            errors.push(ConfigError::at(key, origin_of, message));
        }
    }
}

pub trait Validate {
    fn validate(&self, errors: &mut Vec<ConfigError>, origin_of: &dyn Fn(&str) -> Origin);
}

/// Variables under the prefix that configure something other than the config itself.
const NOT_SETTINGS: &[&str] = &["LOG"];

/// The merged table plus, for each top-level-or-nested key, the layer that set it.
#[derive(Debug, Default)]
pub struct Layers {
    table: Table,
    origins: BTreeMap<String, Origin>,
    early_errors: Vec<ConfigError>,
}

impl Layers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a TOML file as the lowest layer.
    pub fn file(mut self, path: &Path) -> Self {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => match text.parse::<Table>() {
                Ok(t) => {
                    let origin = Origin::File(name);
                    record_origins(&t, "", &origin, &mut self.origins);
                    merge(&mut self.table, t);
                }
                Err(e) => self.early_errors.push(ConfigError {
                    key: String::new(),
                    origin: Origin::File(name),
                    message: format!("not valid TOML: {}", e.to_string().trim()),
                }),
            },
            Err(e) => self.early_errors.push(ConfigError {
                key: String::new(),
                origin: Origin::File(name),
                message: format!("cannot read: {e}"),
            }),
        }
        self
    }

    /// Applies `PREFIX_KEY=value` variables; `__` separates nested keys
    /// (`SWITCHYARD_SHADOW__SAMPLE_RATE` sets `shadow.sample_rate`). The lookup is passed in
    /// so tests never touch the process environment.
    pub fn env<I>(mut self, prefix: &str, vars: I) -> Self
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut vars: Vec<_> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.len() > prefix.len())
            .filter(|(k, _)| !NOT_SETTINGS.contains(&&k[prefix.len()..]))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            let path: Vec<String> = name[prefix.len()..]
                .split("__")
                .map(|p| p.to_ascii_lowercase())
                .collect();
            let value = env_value(&raw);
            let origin = Origin::Env(name.clone());
            self.origins.insert(path.join("."), origin);
            set_path(&mut self.table, &path, value);
        }
        self
    }

    /// Applies command-line flags (highest layer). Only flags the user gave are passed.
    pub fn flag(mut self, key: &str, value: impl Into<Value>) -> Self {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        self.origins
            .insert(key.to_string(), Origin::Flag(key.replace(['_', '.'], "-")));
        set_path(&mut self.table, &path, value.into());
        self
    }

    /// [`flag`](Self::flag) for each `(key, value)` whose flag was given.
    pub fn flags(mut self, pairs: &[(&str, &Option<String>)]) -> Self {
        for (key, value) in pairs {
            if let Some(v) = value {
                self = self.flag(key, v.clone());
            }
        }
        self
    }

    /// The layer that set `key` (or the nearest parent), `Default` if none did.
    pub fn origin_of(&self, key: &str) -> Origin {
        let mut k = key.to_string();
        loop {
            let plain = strip_indices(&k);
            if let Some(o) = self.origins.get(&plain) {
                return o.clone();
            }
            match k.rfind('.') {
                Some(i) => k.truncate(i),
                None => return Origin::Default,
            }
        }
    }

    /// Deserializes and validates, reporting every bad value found.
    pub fn build<T: DeserializeOwned + Validate>(self) -> Result<T, ConfigErrors> {
        self.build_with_warnings().map(|(cfg, _)| cfg)
    }

    /// Like `build`, and also returns the environment variables that were ignored: a
    /// `SWITCHYARD_*` variable naming no setting is a warning, not an error, because other
    /// tools (test harnesses, the other binaries) share the prefix.
    pub fn build_with_warnings<T: DeserializeOwned + Validate>(
        self,
    ) -> Result<(T, Vec<ConfigError>), ConfigErrors> {
        let mut errors = self.early_errors.clone();
        let mut warnings = Vec::new();
        let mut table = self.table.clone();
        // Bounded: each round removes one key, and a config has few keys.
        for _ in 0..64 {
            let de = Value::Table(table.clone());
            match serde_path_to_error::deserialize::<_, T>(de) {
                Ok(cfg) => {
                    if errors.is_empty() {
                        cfg.validate(&mut errors, &|k| self.origin_of(k));
                    }
                    return if errors.is_empty() {
                        Ok((cfg, warnings))
                    } else {
                        Err(ConfigErrors(errors))
                    };
                }
                Err(e) => {
                    let key = e.path().to_string();
                    let key = if key == "." { String::new() } else { key };
                    let message = e.inner().to_string();
                    let unknown = message.starts_with("unknown field");
                    let full_key = match (unknown, field_in_message(&message)) {
                        (true, Some(f)) if key.is_empty() => f,
                        (true, Some(f)) if !key.ends_with(f.as_str()) => format!("{key}.{f}"),
                        _ => key.clone(),
                    };
                    let origin = self.origin_of(&full_key);
                    let ignorable = unknown && matches!(origin, Origin::Env(_));
                    let entry = ConfigError {
                        origin,
                        key: full_key.clone(),
                        message: if ignorable {
                            "names no setting; ignored".to_string()
                        } else {
                            message
                        },
                    };
                    if ignorable {
                        warnings.push(entry);
                    } else {
                        errors.push(entry);
                    }
                    if full_key.is_empty() || !remove_path(&mut table, &full_key) {
                        break;
                    }
                }
            }
        }
        Err(ConfigErrors(errors))
    }
}

fn field_in_message(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    Some(msg[start..end].to_string())
}

fn strip_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0;
    for c in key.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn env_value(raw: &str) -> Value {
    // Numbers, booleans and arrays are typed as TOML would type them; anything else is a
    // string, so URLs and passwords never need quoting.
    let looks_typed = raw == "true"
        || raw == "false"
        || raw.starts_with('[')
        || (!raw.is_empty() && raw.parse::<f64>().is_ok());
    if looks_typed {
        if let Ok(t) = format!("v = {raw}").parse::<Table>() {
            if let Some(v) = t.get("v") {
                return v.clone();
            }
        }
    }
    Value::String(raw.to_string())
}

fn record_origins(t: &Table, prefix: &str, origin: &Origin, out: &mut BTreeMap<String, Origin>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Value::Table(inner) = v {
            record_origins(inner, &key, origin, out);
        }
        out.insert(key, origin.clone());
    }
}

fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        t = match entry {
            Value::Table(inner) => inner,
            _ => return,
        };
    }
    t.insert(last.clone(), value);
}

/// Removes `a.b[2].c` from the table; false if the path is not there.
fn remove_path(table: &mut Table, key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    remove_in_table(table, &parts)
}

fn remove_in_table(table: &mut Table, parts: &[&str]) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    let (name, idx) = split_index(first);
    match (idx, rest.is_empty()) {
        (None, true) => table.remove(name).is_some(),
        (None, false) => match table.get_mut(name) {
            Some(Value::Table(inner)) => remove_in_table(inner, rest),
            _ => false,
        },
        (Some(i), last) => match table.get_mut(name) {
            Some(Value::Array(items)) if i < items.len() => {
                if last {
                    items.remove(i);
                    true
                } else {
                    match &mut items[i] {
                        Value::Table(inner) => remove_in_table(inner, rest),
                        _ => false,
                    }
                }
            }
            _ => false,
        },
    }
}

fn split_index(part: &str) -> (&str, Option<usize>) {
    match part.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (part, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        listen: String,
        #[serde(default)]
        max: u32,
        #[serde(default)]
        shadow: Shadow,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shadow {
        #[serde(default)]
        rate: f64,
    }

    impl Validate for Sample {
        fn validate(&self, errors: &mut Vec<ConfigError>, origin_of: &dyn Fn(&str) -> Origin) {
            if !(0.0..=1.0).contains(&self.shadow.rate) {
                errors.push(ConfigError {
                    key: "shadow.rate".into(),
                    origin: origin_of("shadow.rate"),
                    message: "must be between 0 and 1".into(),
                });
            }
        }
    }

    fn write(text: &str) -> tempfile_path::TempToml {
        tempfile_path::TempToml::new(text)
    }

    mod tempfile_path {
        pub struct TempToml(pub std::path::PathBuf);
        impl TempToml {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "switchyard-cfg-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).expect("write temp config");
                TempToml(p)
            }
        }
        impl Drop for TempToml {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn flags_win_over_env_over_file() {
        let f = write("listen = \"file\"\nmax = 1\n[shadow]\nrate = 0.1\n");
        let cfg: Sample = Layers::new()
            .file(&f.0)
            .env(
                "SWITCHYARD_",
                vec![
                    ("SWITCHYARD_LISTEN".into(), "env".into()),
                    ("SWITCHYARD_MAX".into(), "7".into()),
                    ("SWITCHYARD_SHADOW__RATE".into(), "0.5".into()),
                    ("OTHER".into(), "x".into()),
                ],
            )
            .flag("listen", "flag")
            .build()
            .expect("valid");
        assert_eq!(cfg.listen, "flag");
        assert_eq!(cfg.max, 7);
        assert_eq!(cfg.shadow.rate, 0.5);
    }

    #[test]
    fn reports_every_bad_value_with_origin() {
        let f = write("listen = \"x\"\nmax = \"lots\"\nbogus = 1\n");
        let err = Layers::new()
            .file(&f.0)
            .env(
                "SWITCHYARD_",
                vec![("SWITCHYARD_SHADOW__RATE".into(), "abc".into())],
            )
            .build::<Sample>()
            .expect_err("invalid");
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"max"), "{err}");
        assert!(keys.contains(&"bogus"), "{err}");
        assert!(keys.contains(&"shadow.rate"), "{err}");
        let rate = err
            .0
            .iter()
            .find(|e| e.key == "shadow.rate")
            .expect("rate error");
        assert_eq!(rate.origin, Origin::Env("SWITCHYARD_SHADOW__RATE".into()));
    }

    #[test]
    fn unknown_env_variables_are_warnings() {
        let (cfg, warnings) = Layers::new()
            .flag("listen", "x")
            .env(
                "SWITCHYARD_",
                vec![("SWITCHYARD_CACHE".into(), "/tmp".into())],
            )
            .build_with_warnings::<Sample>()
            .expect("an unknown env var is not fatal");
        assert_eq!(cfg.listen, "x");
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].origin, Origin::Env("SWITCHYARD_CACHE".into()));
    }

    #[test]
    fn validation_errors_name_the_key() {
        let err = Layers::new()
            .flag("listen", "x")
            .flag("shadow.rate", 2.0)
            .build::<Sample>()
            .expect_err("out of range");
        assert_eq!(err.0[0].key, "shadow.rate");
        assert_eq!(err.0[0].origin, Origin::Flag("shadow-rate".into()));
    }

    #[test]
    fn unreadable_and_malformed_files_are_reported() {
        let err = Layers::new()
            .file(Path::new("/nonexistent/switchyard.toml"))
            .flag("listen", "x")
            .build::<Sample>()
            .expect_err("missing file");
        assert!(err.to_string().contains("cannot read"), "{err}");
        let f = write("listen = [\n");
        let err = Layers::new()
            .file(&f.0)
            .build::<Sample>()
            .expect_err("bad toml");
        assert!(err.to_string().contains("not valid TOML"), "{err}");
    }
}
