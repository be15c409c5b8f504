//! `${VAR}`, `${VAR:-default}` and `${file:PATH}` in config values.
//!
//! Interpolation runs on the parsed YAML tree, not on the raw text, so a value can
//! never inject YAML structure and every error still points at the original
//! line. `$${` escapes a literal `${`.

use std::path::Path;

use serde_yaml::Value;

/// Where a variable's value comes from: the process environment, then the `.env` file.
pub trait Lookup {
    fn var(&self, name: &str) -> Option<String>;
}

/// Reads the environment first, then the values parsed from `.env`.
pub struct EnvLookup {
    pub dotenv: Vec<(String, String)>,
}

impl Lookup for EnvLookup {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().or_else(|| {
            self.dotenv
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }
}

/// An interpolation failure at `path` (`sources.fb.access_token`).
#[derive(Debug)]
pub struct InterpolationError {
    pub path: Vec<String>,
    pub message: String,
}

/// Replaces every `${…}` in the string leaves of `value`, in place.
pub fn interpolate(
    value: &mut Value,
    lookup: &dyn Lookup,
    base_dir: &Path,
    path: &mut Vec<String>,
) -> Result<(), InterpolationError> {
    match value {
        Value::String(s) if s.contains("${") => {
            *s = expand(s, lookup, base_dir).map_err(|message| InterpolationError {
                path: path.clone(),
                message,
            })?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                interpolate(item, lookup, base_dir, path)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key.as_str().unwrap_or("?").to_string());
                interpolate(item, lookup, base_dir, path)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => interpolate(&mut tagged.value, lookup, base_dir, path)?,
        _ => {}
    }
    Ok(())
}

/// Expands one string.
pub fn expand(text: &str, lookup: &dyn Lookup, base_dir: &Path) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
        let expr = &body[..end];
        out.push_str(&resolve(expr, lookup, base_dir)?);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(expr: &str, lookup: &dyn Lookup, base_dir: &Path) -> Result<String, String> {
    if let Some(file) = expr.strip_prefix("file:") {
        let path = base_dir.join(file.trim());
        return std::fs::read_to_string(&path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()));
    }
    let (name, default) = match expr.split_once(":-") {
        Some((name, default)) => (name.trim(), Some(default)),
        None => (expr.trim(), None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`${{{expr}}}` is not a valid variable reference"));
    }
    match (lookup.var(name), default) {
        (Some(v), _) if !v.is_empty() || default.is_none() => Ok(v),
        (_, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} is not set (set it, add it to .env, or write ${{{name}:-default}})"
        )),
        (Some(v), None) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Lookup for Fixed {
        fn var(&self, name: &str) -> Option<String> {
            (name == "TOKEN").then(|| "abc".to_string())
        }
    }

    #[test]
    fn expands_variables_defaults_escapes_and_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.txt"), "from-file\n").unwrap();
        let e = |t: &str| expand(t, &Fixed, dir.path());
        assert_eq!(e("x-${TOKEN}-y").unwrap(), "x-abc-y");
        assert_eq!(e("${MISSING:-dflt}").unwrap(), "dflt");
        assert_eq!(e("$${TOKEN} costs $5").unwrap(), "${TOKEN} costs $5");
        assert_eq!(e("${file:s.txt}").unwrap(), "from-file");
        assert!(e("${MISSING}").unwrap_err().contains("MISSING is not set"));
        assert!(e("${TOKEN").unwrap_err().contains("unclosed"));
    }
}
