//! Tenant ids: parsed once at the edge, never raw strings in the core.
//!
//! A tenant id becomes a directory name and an S3 key prefix, so the grammar is
//! strict: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, never `.` or `..`. Path traversal
//! is impossible by construction.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("tenant id is empty".into());
        }
        if raw.len() > Self::MAX_LEN {
            return Err(format!(
                "tenant id is {} characters long; at most {} are allowed",
                raw.len(),
                Self::MAX_LEN
            ));
        }
        let mut chars = raw.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !first_ok || !rest_ok || raw == "." || raw == ".." {
            return Err(format!(
                "tenant id {raw:?} is invalid: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::TenantId;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in ["alice", "A", "0", "user.name_1-x", &"a".repeat(128)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_traversal_and_oddities() {
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            ".hidden",
            "-x",
            "_x",
            "a b",
            "é",
            "a\0b",
            &"a".repeat(129),
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
