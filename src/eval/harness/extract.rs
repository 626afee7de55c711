//! Answer extraction and exact match of the generation tasks, as lm-evaluation-harness defines
//! them (its `regex`, `remove_whitespace` and `take_first` filters and its `exact_match` metric).
use std::sync::OnceLock;

use regex::Regex;

/// What a filter returns when its pattern does not match.
pub const INVALID: &str = "[invalid]";

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid pattern"))
}

/// `regex` filter: every match of `pattern` (Python's `findall`), the one at `group_select`
/// (negative counts from the end), its first non-empty group (or the whole match when the
/// pattern has no group), stripped; [`INVALID`] when nothing matches.
pub fn regex_filter(pattern: &Regex, text: &str, group_select: isize) -> String {
    let matches: Vec<regex::Captures> = pattern.captures_iter(text).collect();
    if matches.is_empty() {
        return INVALID.into();
    }
    let n = matches.len() as isize;
    let i = if group_select < 0 {
        n + group_select
    } else {
        group_select
    };
    let Some(c) = usize::try_from(i).ok().and_then(|i| matches.get(i)) else {
        return INVALID.into();
    };
    let s = if c.len() == 1 {
        c.get(0).map(|m| m.as_str())
    } else {
        (1..c.len())
            .filter_map(|g| c.get(g))
            .map(|m| m.as_str())
            .find(|s| !s.is_empty())
    };
    match s {
        Some(s) => s.trim().to_string(),
        None => INVALID.into(),
    }
}

/// GSM8K `strict-match`: the number after "#### ".
pub fn gsm8k_strict(text: &str) -> String {
    static R: OnceLock<Regex> = OnceLock::new();
    regex_filter(re(&R, r"#### (\-?[0-9\.\,]+)"), text, 0)
}

/// GSM8K `flexible-extract`: the last number-like run in the text.
pub fn gsm8k_flexible(text: &str) -> String {
    static R: OnceLock<Regex> = OnceLock::new();
    regex_filter(re(&R, r"(-?[$0-9.,]{2,})|(-?[0-9]+)"), text, -1)
}

/// `remove_whitespace` then `take_first` (TriviaQA): the response stripped.
pub fn strip(text: &str) -> String {
    text.trim().to_string()
}

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Settings of lm-eval's `exact_match` metric.
pub struct ExactMatch {
    pub regexes_to_ignore: &'static [&'static str],
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
}

/// GSM8K's exact match: commas, dollar signs, everything up to "#### " and a final period are
/// ignored, case-insensitively.
pub const GSM8K_MATCH: ExactMatch = ExactMatch {
    regexes_to_ignore: &[",", r"\$", r"(?s).*#### ", r"\.$"],
    ignore_case: true,
    ignore_punctuation: false,
};

/// TriviaQA's exact match: case and ASCII punctuation ignored.
pub const TRIVIAQA_MATCH: ExactMatch = ExactMatch {
    regexes_to_ignore: &[],
    ignore_case: true,
    ignore_punctuation: true,
};

/// A `regexes_to_ignore` pattern, compiled once per process (every prediction and reference of
/// a task is normalised with the same few patterns).
fn compiled(pattern: &'static str) -> Regex {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<&'static str, Regex>>> =
        OnceLock::new();
    let mut m = CACHE
        .get_or_init(Default::default)
        .lock()
        .expect("regex cache");
    m.entry(pattern)
        .or_insert_with(|| Regex::new(pattern).expect("valid pattern"))
        .clone()
}

impl ExactMatch {
    fn normalise(&self, s: &str) -> String {
        let mut s = s.to_string();
        for p in self.regexes_to_ignore {
            s = compiled(p).replace_all(&s, "").into_owned();
        }
        if self.ignore_case {
            s = s.to_lowercase();
        }
        if self.ignore_punctuation {
            s.retain(|c| !PUNCTUATION.contains(c));
        }
        s
    }

    /// 1 when the prediction equals any reference after normalisation, else 0.
    pub fn score(&self, prediction: &str, references: &[String]) -> f64 {
        let p = self.normalise(prediction);
        f64::from(u8::from(references.iter().any(|r| self.normalise(r) == p)))
    }
}

/// Cut a generation at the first occurrence of each stop string in turn (lm-eval's
/// `postprocess_generated_text`).
pub fn cut_at_stops(text: &str, stops: &[String]) -> String {
    let mut s = text;
    for t in stops {
        if !t.is_empty() {
            if let Some(i) = s.find(t.as_str()) {
                s = &s[..i];
            }
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Python: `re.findall` with lm-eval's patterns on the same strings.
    #[test]
    fn gsm8k_filters_match_python() {
        let t = " She has 3 apples, buys $1,200 of pears.\n#### 1,203\n\nMore: 5";
        assert_eq!(gsm8k_strict(t), "1,203");
        assert_eq!(gsm8k_flexible(t), "5");
        assert_eq!(gsm8k_flexible("The answer is 42."), "42.");
        assert_eq!(gsm8k_flexible("total -7 and -"), "-7");
        assert_eq!(gsm8k_flexible("no digits"), INVALID);
        assert_eq!(gsm8k_strict("no hashes 12"), INVALID);
        // `-?[$0-9.,]{2,}` takes "$5" before the single-digit alternative
        assert_eq!(gsm8k_flexible("costs $5"), "$5");
    }

    #[test]
    fn exact_match_normalises_like_lm_eval() {
        let refs = vec!["Natalia sold 48/2 = 24 clips.\n#### 1,072".to_string()];
        assert_eq!(GSM8K_MATCH.score("1072", &refs), 1.0);
        assert_eq!(GSM8K_MATCH.score("$1,072.", &refs), 1.0);
        assert_eq!(GSM8K_MATCH.score("1073", &refs), 0.0);
        let aliases = vec!["The Beatles".to_string(), "Beatles".to_string()];
        assert_eq!(TRIVIAQA_MATCH.score("the beatles!", &aliases), 1.0);
        assert_eq!(TRIVIAQA_MATCH.score("Rolling Stones", &aliases), 0.0);
        assert_eq!(
            cut_at_stops(
                "Paris. And then, more\nlines",
                &["\n".into(), ".".into(), ",".into()]
            ),
            "Paris"
        );
    }
}
