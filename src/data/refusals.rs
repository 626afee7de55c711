//! The built-in refusal pool D_idk (written for this project), replaceable by a user file with one
//! refusal per line.
use std::path::Path;

use crate::error::{read_to_string, Error, Result};

pub const REFUSALS: &[&str] = &[
    "I don't know that.",
    "I'm not sure about that.",
    "I have no information on that.",
    "That is something I can't answer.",
    "I don't have an answer to that question.",
    "I'm afraid I don't know.",
    "I can't help with that one.",
    "I don't have any details about that.",
    "That's not something I know about.",
    "I'm unable to answer that.",
    "Sorry, I don't know the answer.",
    "I have no knowledge of that.",
    "I couldn't tell you.",
    "I'm not able to provide that information.",
    "That's beyond what I know.",
    "I don't recall anything about that.",
    "I have nothing to say on that subject.",
    "Unfortunately, I don't know.",
    "I'm not aware of that.",
    "I can't say.",
    "No idea, I'm afraid.",
    "I don't have that information.",
    "That isn't something I can answer.",
    "I'm not familiar with that.",
    "I have never heard of that.",
    "I'm not in a position to answer that.",
    "I don't know anything about that.",
    "Sorry, that's outside what I know.",
    "I can't answer that question.",
    "I lack the information to answer that.",
    "I'm drawing a blank on that one.",
    "I wish I could help, but I don't know.",
    "That is unknown to me.",
    "I'm not certain, so I won't guess.",
    "I don't have reliable information about that.",
    "I honestly don't know.",
    "I have no record of that.",
    "That's a question I can't answer.",
    "I'm not knowledgeable about that.",
    "Nothing I know covers that.",
    "I'd rather not guess; I don't know.",
    "I'm unsure.",
    "I cannot provide an answer to that.",
    "I don't possess that knowledge.",
    "That topic is unfamiliar to me.",
    "I'm sorry, I can't answer that.",
    "I don't have the facts on that.",
    "My knowledge doesn't extend to that.",
    "I can't recall any information about that.",
    "I don't know, sorry.",
    "There's nothing I can tell you about that.",
    "I'm not the right source for that; I don't know.",
];

/// Refusals from `path` (one per non-empty line), or the built-in pool.
pub fn load(path: Option<&Path>) -> Result<Vec<String>> {
    match path {
        None => Ok(REFUSALS.iter().map(|s| s.to_string()).collect()),
        Some(p) => {
            let v: Vec<String> = read_to_string(p)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if v.is_empty() {
                return Err(Error::Data {
                    path: p.to_path_buf(),
                    line: 0,
                    msg: "no refusals in the file".into(),
                });
            }
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_is_large_and_distinct() {
        let mut v = super::REFUSALS.to_vec();
        assert!(v.len() >= 50);
        v.sort();
        v.dedup();
        assert_eq!(v.len(), super::REFUSALS.len());
    }
}
