//! The config file as written by ops (`routes.yaml`), and its loading.
//!
//! Raw types mirror the YAML one to one and refuse unknown keys; they are then
//! checked and turned into a [`crate::table::Table`], the typed form the hot
//! path reads. A config error always names the file and, where it can be
//! found, the line and column of the offending value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Top level of `routes.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Proxy listener address; changing it needs a restart.
    pub listen: String,
    /// Admin listener address; loopback unless set otherwise.
    #[serde(default = "default_admin")]
    pub admin: String,
    pub upstreams: BTreeMap<String, RawUpstream>,
    pub routes: Vec<RawRoute>,
}

fn default_admin() -> String {
    "127.0.0.1:9901".into()
}

/// One upstream group: where requests for it go and how long to wait.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub targets: Vec<String>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// One route: which requests it takes and where they go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub prefix: String,
    pub upstream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub strip_prefix: bool,
}

/// A config that cannot be used, with where the fault is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// The text of a config file with its name, so that errors can point into it.
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// An error at the first place where `anchors` occur in order (each one
    /// searched after the previous), or with no location if they do not.
    pub fn error_at(&self, anchors: &[&str], message: impl Into<String>) -> ConfigError {
        let (line, column) = match self.locate(anchors) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    fn locate(&self, anchors: &[&str]) -> Option<(usize, usize)> {
        let mut from = 0;
        let mut at = None;
        for anchor in anchors.iter().filter(|a| !a.is_empty()) {
            let found = from + self.text[from..].find(anchor)?;
            at = Some(found);
            from = found + anchor.len();
        }
        let offset = at?;
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Some((line, column))
    }

    /// Parses the YAML into raw types; serde_yaml gives line and column.
    pub fn parse(&self) -> Result<RawConfig, ConfigError> {
        serde_yaml::from_str(self.text).map_err(|e| {
            let location = e.location();
            ConfigError {
                file: self.file.to_string(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message: e.to_string(),
            }
        })
    }
}

/// Reads a config file, following symlinks (Kubernetes `..data` swaps).
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: None,
        column: None,
        message: format!("cannot read the config: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_an_error_with_location() {
        let text = "listen: \"127.0.0.1:0\"\nupstreams: {}\nroutes: []\nbogus: 1\n";
        let err = Source { file: "r.yaml", text }.parse().unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.message.contains("bogus"), "{err}");
        assert!(err.to_string().starts_with("r.yaml:4:"), "{err}");
    }

    #[test]
    fn bad_duration_is_an_error_with_location() {
        let text = "listen: x\nupstreams:\n  a:\n    targets: [\"http://h:1\"]\n    timeout: 5 parsecs\nroutes: []\n";
        let err = Source { file: "r.yaml", text }.parse().unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
    }

    #[test]
    fn locate_follows_anchors_in_order() {
        let text = "routes:\n  - name: a\n    upstream: x\n  - name: b\n    upstream: x\n";
        let err = Source { file: "f", text }.error_at(&["name: b", "upstream", "x"], "m");
        assert_eq!((err.line, err.column), (Some(5), Some(15)));
    }
}
