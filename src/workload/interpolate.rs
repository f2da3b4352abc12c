//! `${VAR}` interpolation of workload values, as compose does it.
//!
//! Lives apart from the validation pass because it is the one place that reads the
//! daemon's environment, and because `${tenantId}` must survive it untouched: that
//! placeholder is filled per tenant by the sync engine, not at load time.

/// `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`; `${tenantId}` is kept as is.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        // Find the matching brace, allowing nested `${...}` in defaults.
        let mut depth = 1;
        let end = body.char_indices().find_map(|(i, c)| {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            (depth == 0).then_some(i)
        });
        let Some(end) = end else {
            return Err(format!(
                "unterminated `${{` in {s:?}: close it with `}}`, or write `$$` for a literal `$`"
            ));
        };
        let expr = &body[..end];
        rest = &body[end + 1..];
        if expr == "tenantId" {
            out.push_str("${tenantId}");
            continue;
        }
        let name_len = expr
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len());
        let (name, modifier) = expr.split_at(name_len);
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("invalid variable `${{{expr}}}`: use ${{VAR}} or ${{VAR:-default}}, or `$$` for a literal `$`"));
        }
        let value = env(name);
        let default = match (modifier.strip_prefix(":-"), modifier.strip_prefix('-')) {
            _ if modifier.is_empty() => None,
            (Some(default), _) => value
                .as_deref()
                .is_none_or(str::is_empty)
                .then_some(default),
            (None, Some(default)) => value.is_none().then_some(default),
            _ => {
                return Err(format!(
                    "unsupported interpolation `${{{expr}}}`: use ${{VAR}} or ${{VAR:-default}}"
                ))
            }
        };
        match (default, value) {
            (Some(default), _) => out.push_str(&interpolate(default, env)?),
            (None, Some(value)) => out.push_str(&value),
            (None, None) => {
                return Err(format!("environment variable `{name}` is not set: set it for the daemon, or give a default with ${{{name}:-default}}"))
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("v".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn defaults_escapes_and_the_tenant_placeholder() {
        let i = |s: &str| interpolate(s, &env);
        assert_eq!(i("${SET}/${tenantId}/").as_deref(), Ok("v/${tenantId}/"));
        assert_eq!(i("${EMPTY-x}|${EMPTY:-y}").as_deref(), Ok("|y"));
        assert_eq!(i("${UNSET:-${SET}}").as_deref(), Ok("v"));
        assert_eq!(i("$$SET $x").as_deref(), Ok("$SET $x"));
        assert!(i("${UNSET}").is_err_and(|e| e.contains("`UNSET` is not set")));
        assert!(i("${1X}").is_err_and(|e| e.contains("invalid variable")));
        assert!(i("${SET?err}").is_err_and(|e| e.contains("unsupported")));
        assert!(i("${open").is_err_and(|e| e.contains("unterminated")));
    }
}
