//! Name patterns of parameters and modules: `{a,b}` sets, `*` for any run of characters, matched
//! anywhere in the name ("layers.{5,6}.mlp" selects `model.layers.5.mlp.down_proj.weight`).
use crate::error::{Error, Result};

/// Expand `{a,b}` sets: "l.{1,2}.x" -> ["l.1.x", "l.2.x"].
pub fn expand_braces(p: &str) -> Vec<String> {
    if let (Some(a), Some(b)) = (p.find('{'), p.find('}')) {
        if a < b {
            let (pre, rest) = (&p[..a], &p[b + 1..]);
            return p[a + 1..b]
                .split(',')
                .flat_map(|alt| expand_braces(&format!("{pre}{}{rest}", alt.trim())))
                .collect();
        }
    }
    vec![p.to_string()]
}

pub fn glob_contains(pattern: &str, name: &str) -> bool {
    // '*' matches any run of characters; the pattern may match anywhere in the name.
    fn rec(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => true,
            Some(b'*') => (0..=s.len()).any(|k| rec(&p[1..], &s[k..])),
            Some(&c) => s.first() == Some(&c) && rec(&p[1..], &s[1..]),
        }
    }
    (0..=name.len()).any(|k| rec(pattern.as_bytes(), &name.as_bytes()[k..]))
}

/// Names of the parameters selected by `patterns` (all when empty). Errors when a pattern
/// selects nothing.
pub fn select_params(names: &[String], patterns: &[String]) -> Result<Vec<bool>> {
    if patterns.is_empty() {
        return Ok(vec![true; names.len()]);
    }
    let mut sel = vec![false; names.len()];
    for p in patterns {
        let mut hit = false;
        for e in expand_braces(p) {
            for (i, n) in names.iter().enumerate() {
                if glob_contains(&e, n) {
                    sel[i] = true;
                    hit = true;
                }
            }
        }
        if !hit {
            return Err(Error::Invalid(format!(
                "trainable pattern `{p}` matches no parameter"
            )));
        }
    }
    Ok(sel)
}
