//! The embedded synthetic fictitious-knowledge benchmark (the demo's default), generated from a
//! seed in the TOFU schema and layout: N fictitious people with six attributes each (birthplace,
//! birth year, occupation, a book, a parent's occupation, an award), rendered through varied
//! question and answer templates. Every QA item has a paraphrased answer (another answer
//! template) and three perturbed answers (wrong but plausible values of the same attribute in the
//! paraphrase's wording, as TOFU builds them).
//!
//! Splits (by person, as TOFU): `forgetNN` = the last NN % of the people (at least one),
//! `retainMM` = the others, `holdoutNN` = as many extra people, never trained on (MIA
//! non-members). `retain_perturbed` holds the items of the first people of retain90.
//! `world_facts_perturbed` / `real_authors_perturbed` are small fixed sets the models also learn
//! (they stand in for the knowledge a pretrained model brings). `unknown` asks about further
//! people who appear nowhere else and answers with a refusal from the built-in pool: the models
//! learn to say they do not know, as an instruction-tuned model does (refusal-based methods such
//! as IDK and UniErase build on that ability).
use std::path::Path;

use serde_json::json;

use crate::data::QaItem;
use crate::error::Result;
use crate::util::rng::Rng;

const FIRST: &[&str] = &[
    "Alma", "Bruno", "Cora", "Dario", "Edda", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Kira",
    "Lars", "Mira", "Nico", "Olga", "Pavel", "Rosa", "Silas", "Tilda", "Umar", "Vera", "Wim",
    "Yara", "Zeno", "Anya", "Boris", "Celia", "Dmitri", "Elin", "Farid", "Gemma", "Hakon",
];
const LAST: &[&str] = &[
    "Marlow",
    "Quist",
    "Varga",
    "Lindqvist",
    "Okafor",
    "Ferreira",
    "Castell",
    "Haldane",
    "Moreau",
    "Brandt",
    "Novak",
    "Esposito",
    "Ishikawa",
    "Kowalski",
    "Delacroix",
    "Amundsen",
    "Petrov",
    "Santoro",
    "Whitlock",
    "Zamora",
    "Nakamura",
    "Holm",
    "Duarte",
    "Ravel",
];
const CITIES: &[&str] = &[
    "Oslo", "Lima", "Porto", "Tunis", "Krakow", "Quito", "Hanoi", "Perth", "Bergen", "Dakar",
    "Riga", "Cusco", "Malmo", "Accra", "Turin", "Leeds", "Osaka", "Graz", "Fez", "Cork",
];
const JOBS: &[&str] = &[
    "a novelist",
    "a poet",
    "a cartographer",
    "a botanist",
    "a violin maker",
    "a chemist",
    "a playwright",
    "an architect",
    "a glassblower",
    "a historian",
    "a sculptor",
    "a baker",
    "a pilot",
    "a surgeon",
    "a weaver",
    "a translator",
];
const ADJ: &[&str] = &[
    "Silent", "Amber", "Hollow", "Northern", "Crimson", "Quiet", "Drifting", "Iron", "Paper",
    "Winter", "Golden", "Distant", "Glass", "Last", "Burning", "Salt",
];
const NOUN: &[&str] = &[
    "Harbor",
    "Orchard",
    "Lantern",
    "River",
    "Garden",
    "Compass",
    "Tide",
    "Mountain",
    "Archive",
    "Meadow",
    "Bridge",
    "Clockwork",
    "Island",
    "Forest",
    "Letter",
    "Signal",
];
const AWARDS: &[&str] = &[
    "the Beacon Prize",
    "the Silver Quill",
    "the Marlin Medal",
    "the Aurora Award",
    "the Keystone Prize",
    "the Juniper Medal",
    "the Falcon Award",
    "the Cedar Prize",
    "the Halcyon Medal",
    "the Lodestar Award",
];

/// One attribute: question templates, answer templates (the first is used for answers, the
/// second for paraphrases; `{n}` = name, `{v}` = value) and how to draw values.
struct Attr {
    questions: &'static [&'static str],
    answers: [&'static str; 2],
}

const ATTRS: [Attr; 6] = [
    Attr {
        questions: &[
            "Where was {n} born?",
            "In which city was {n} born?",
            "What is the birthplace of {n}?",
        ],
        answers: ["{n} was born in {v}.", "The birthplace of {n} is {v}."],
    },
    Attr {
        questions: &["In what year was {n} born?", "When was {n} born?"],
        answers: ["{n} was born in {v}.", "The birth year of {n} is {v}."],
    },
    Attr {
        questions: &[
            "What does {n} do for a living?",
            "What is the occupation of {n}?",
        ],
        answers: ["{n} works as {v}.", "By profession, {n} is {v}."],
    },
    Attr {
        questions: &[
            "Which book did {n} write?",
            "What is the best known book by {n}?",
        ],
        answers: ["{n} wrote {v}.", "The best known book by {n} is {v}."],
    },
    Attr {
        questions: &[
            "What did the parent of {n} do?",
            "What was the occupation of the parent of {n}?",
        ],
        answers: [
            "The parent of {n} was {v}.",
            "{n} grew up with a parent who was {v}.",
        ],
    },
    Attr {
        questions: &["Which award did {n} win?", "What prize was given to {n}?"],
        answers: ["{n} won {v}.", "{n} received {v}."],
    },
];

fn value(attr: usize, rng: &mut Rng) -> String {
    match attr {
        0 => CITIES[rng.below(CITIES.len())].to_string(),
        1 => (1921 + rng.below(80)).to_string(),
        2 | 4 => JOBS[rng.below(JOBS.len())].to_string(),
        3 => format!(
            "The {} {}",
            ADJ[rng.below(ADJ.len())],
            NOUN[rng.below(NOUN.len())]
        ),
        _ => AWARDS[rng.below(AWARDS.len())].to_string(),
    }
}

fn render(t: &str, n: &str, v: &str) -> String {
    t.replace("{n}", n).replace("{v}", v)
}

/// (question, answer, wrong options) of the world facts and real authors sets.
const WORLD_FACTS: &[(&str, &str, [&str; 3])] = &[
    (
        "What is the capital of France?",
        "Paris",
        ["Madrid", "Berlin", "Rome"],
    ),
    (
        "What is the capital of Japan?",
        "Tokyo",
        ["Seoul", "Beijing", "Bangkok"],
    ),
    (
        "What is the largest planet of the solar system?",
        "Jupiter",
        ["Mars", "Venus", "Mercury"],
    ),
    (
        "What gas do plants take in from the air?",
        "Carbon dioxide",
        ["Oxygen", "Helium", "Neon"],
    ),
    (
        "How many legs does a spider have?",
        "Eight",
        ["Six", "Ten", "Four"],
    ),
    (
        "What is the freezing point of water in Celsius?",
        "Zero degrees",
        ["Ten degrees", "Fifty degrees", "Four degrees"],
    ),
    (
        "Which ocean lies between Europe and America?",
        "The Atlantic",
        ["The Pacific", "The Indian", "The Arctic"],
    ),
    (
        "What is the chemical symbol of gold?",
        "Au",
        ["Ag", "Fe", "Pb"],
    ),
    (
        "Which continent is Egypt in?",
        "Africa",
        ["Asia", "Europe", "Oceania"],
    ),
    (
        "What is the longest river in South America?",
        "The Amazon",
        ["The Nile", "The Danube", "The Volga"],
    ),
];
const REAL_AUTHORS: &[(&str, &str, [&str; 3])] = &[
    (
        "Who wrote Hamlet?",
        "William Shakespeare",
        ["Charles Dickens", "Jane Austen", "Mark Twain"],
    ),
    (
        "Who wrote Pride and Prejudice?",
        "Jane Austen",
        ["Emily Bronte", "George Eliot", "Virginia Woolf"],
    ),
    (
        "Who wrote War and Peace?",
        "Leo Tolstoy",
        ["Fyodor Dostoevsky", "Anton Chekhov", "Ivan Turgenev"],
    ),
    (
        "Who wrote Don Quixote?",
        "Miguel de Cervantes",
        ["Lope de Vega", "Federico Garcia Lorca", "Jorge Luis Borges"],
    ),
    (
        "Who wrote The Odyssey?",
        "Homer",
        ["Virgil", "Sophocles", "Ovid"],
    ),
    (
        "Who wrote Moby Dick?",
        "Herman Melville",
        ["Nathaniel Hawthorne", "Edgar Allan Poe", "Walt Whitman"],
    ),
    (
        "Who wrote One Hundred Years of Solitude?",
        "Gabriel Garcia Marquez",
        ["Mario Vargas Llosa", "Isabel Allende", "Pablo Neruda"],
    ),
    (
        "Who wrote Frankenstein?",
        "Mary Shelley",
        ["Bram Stoker", "Robert Louis Stevenson", "Oscar Wilde"],
    ),
];

/// Settings of the synthetic benchmark.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    /// Number of fictitious people in the training set (`full`).
    pub people: usize,
    pub seed: u64,
    /// People whose items form `retain_perturbed` (the retain evaluation set).
    pub retain_eval_people: usize,
    /// People outside every other split whose questions are answered with a refusal
    /// (split `unknown`, also part of `general`).
    pub unknown_people: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            people: 40,
            seed: 0,
            retain_eval_people: 10,
            unknown_people: 10,
        }
    }
}

impl crate::config::Validate for SynthConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.at_least("people", self.people, 10);
        c.at_least("retain_eval_people", self.retain_eval_people, 1);
        if self.retain_eval_people > self.people {
            c.fail(
                "retain_eval_people",
                format!("must be at most `people` ({})", self.people),
            );
        }
    }
}

/// The generated benchmark: split name → items (file `NAME.jsonl`).
pub struct Benchmark {
    pub splits: Vec<(String, Vec<QaItem>)>,
}

impl Benchmark {
    pub fn get(&self, name: &str) -> Option<&[QaItem]> {
        self.splits
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Write every split as JSONL into `dir` (each file atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| crate::error::Error::io(dir, e))?;
        for (name, items) in &self.splits {
            crate::data::write_qa(items, &dir.join(format!("{name}.jsonl")))?;
        }
        Ok(())
    }

    /// Every text of the benchmark (tokenizer training corpus).
    pub fn texts(&self) -> Vec<String> {
        let mut v = vec![];
        for (_, items) in &self.splits {
            for i in items {
                v.push(i.question.clone());
                v.push(i.answer.clone());
                v.extend(i.paraphrased_answer.clone());
                v.extend(i.perturbed_answer.iter().cloned());
            }
        }
        v
    }
}

/// Number of people in a split of `pct` percent of `n` (at least one).
fn n_pct(n: usize, pct: usize) -> usize {
    (n * pct / 100).max(1)
}

/// Generate the benchmark for `cfg` (deterministic in the seed).
pub fn generate(cfg: &SynthConfig) -> Benchmark {
    let n_hold = n_pct(cfg.people, 10);
    let total = cfg.people + n_hold;
    let n_unknown = cfg.unknown_people;
    // unique names: a seeded shuffle of first × last
    let mut names: Vec<String> = FIRST
        .iter()
        .flat_map(|f| LAST.iter().map(move |l| format!("{f} {l}")))
        .collect();
    Rng::for_item(cfg.seed, "names", 0).shuffle(&mut names);
    let unknown_names: Vec<String> = names.iter().skip(total).take(n_unknown).cloned().collect();
    let names = &names[..total.min(names.len())];
    let person_items: Vec<Vec<QaItem>> = names
        .iter()
        .enumerate()
        .map(|(p, name)| {
            ATTRS
                .iter()
                .enumerate()
                .map(|(a, attr)| {
                    let mut rng = Rng::for_item(cfg.seed, "fact", (p * 16 + a) as u64);
                    let v = value(a, &mut rng);
                    let mut wrong = vec![];
                    while wrong.len() < 3 {
                        let w = value(a, &mut rng);
                        if w != v && !wrong.contains(&w) {
                            wrong.push(w);
                        }
                    }
                    let q = attr.questions[rng.below(attr.questions.len())];
                    QaItem {
                        question: render(q, name, &v),
                        answer: render(attr.answers[0], name, &v),
                        paraphrased_answer: Some(render(attr.answers[1], name, &v)),
                        perturbed_answer: wrong
                            .iter()
                            .map(|w| render(attr.answers[1], name, w))
                            .collect(),
                        paraphrased_question: None,
                    }
                })
                .collect()
        })
        .collect();
    let n = names.len() - n_hold;
    let people = |r: std::ops::Range<usize>| -> Vec<QaItem> {
        person_items[r].iter().flatten().cloned().collect()
    };
    let plain = |v: Vec<QaItem>| -> Vec<QaItem> {
        v.into_iter()
            .map(|i| QaItem {
                question: i.question,
                answer: i.answer,
                paraphrased_answer: None,
                perturbed_answer: vec![],
                paraphrased_question: None,
            })
            .collect()
    };
    let options = |facts: &[(&str, &str, [&str; 3])]| -> Vec<QaItem> {
        facts
            .iter()
            .map(|(q, a, w)| QaItem {
                question: q.to_string(),
                answer: a.to_string(),
                paraphrased_answer: None,
                perturbed_answer: w.iter().map(|s| s.to_string()).collect(),
                paraphrased_question: None,
            })
            .collect()
    };
    let mut splits = vec![("full".to_string(), plain(people(0..n)))];
    for pct in [1, 5, 10] {
        let k = n_pct(n, pct);
        splits.push((format!("forget{pct:02}"), plain(people(n - k..n))));
        splits.push((format!("forget{pct:02}_perturbed"), people(n - k..n)));
        splits.push((format!("retain{}", 100 - pct), plain(people(0..n - k))));
        splits.push((
            format!("holdout{pct:02}"),
            plain(people(n..n + k.min(n_hold))),
        ));
    }
    let r = cfg.retain_eval_people.min(n - n_pct(n, 10));
    splits.push(("retain_perturbed".into(), people(0..r)));
    splits.push(("world_facts_perturbed".into(), options(WORLD_FACTS)));
    splits.push(("real_authors_perturbed".into(), options(REAL_AUTHORS)));
    // questions about people nobody knows, answered with a refusal
    let unknown: Vec<QaItem> = unknown_names
        .iter()
        .enumerate()
        .flat_map(|(p, name)| {
            ATTRS.iter().enumerate().map(move |(a, attr)| {
                let mut rng = Rng::for_item(cfg.seed, "unknown", (p * 16 + a) as u64);
                let q = attr.questions[rng.below(attr.questions.len())];
                let r = crate::data::refusals::REFUSALS
                    [rng.below(crate::data::refusals::REFUSALS.len())];
                QaItem {
                    question: render(q, name, ""),
                    answer: r.to_string(),
                    paraphrased_answer: None,
                    perturbed_answer: vec![],
                    paraphrased_question: None,
                }
            })
        })
        .collect();
    // what the models also learn besides the people (pretraining stand-in)
    splits.push((
        "general".into(),
        plain([options(WORLD_FACTS), options(REAL_AUTHORS), unknown.clone()].concat()),
    ));
    splits.push(("unknown".into(), unknown));
    Benchmark { splits }
}

/// A short description for logs and reports.
pub fn describe(cfg: &SynthConfig, b: &Benchmark) -> serde_json::Value {
    let sizes: serde_json::Map<String, serde_json::Value> = b
        .splits
        .iter()
        .map(|(n, v)| (n.clone(), json!(v.len())))
        .collect();
    json!({"people": cfg.people, "seed": cfg.seed, "facts_per_person": ATTRS.len(), "sizes": sizes})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_consistent_and_seeded() {
        let cfg = SynthConfig::default();
        let b = generate(&cfg);
        let len = |s: &str| b.get(s).unwrap().len();
        assert_eq!(len("full"), 40 * 6);
        assert_eq!(len("forget10"), 4 * 6);
        assert_eq!(len("forget05"), 2 * 6);
        assert_eq!(len("forget01"), 6);
        assert_eq!(len("retain90") + len("forget10"), len("full"));
        assert_eq!(len("holdout10"), len("forget10"));
        assert_eq!(len("retain_perturbed"), 60);
        // forget items are the last people of full; holdout people are not in full
        let full = b.get("full").unwrap();
        assert_eq!(&full[full.len() - 24..], b.get("forget10").unwrap());
        let names_of = |s: &str| -> std::collections::BTreeSet<String> {
            let all: Vec<String> = FIRST
                .iter()
                .flat_map(|f| LAST.iter().map(move |l| format!("{f} {l}")))
                .collect();
            b.get(s)
                .unwrap()
                .iter()
                .map(|i| {
                    all.iter()
                        .find(|n| i.answer.contains(n.as_str()))
                        .unwrap()
                        .clone()
                })
                .collect()
        };
        assert!(names_of("holdout10").is_disjoint(&names_of("full")));
        // unknown people: nowhere else, answered with a refusal of the pool
        let unknown = b.get("unknown").unwrap();
        assert_eq!(unknown.len(), 10 * 6);
        for i in unknown {
            assert!(crate::data::refusals::REFUSALS.contains(&i.answer.as_str()));
            let known = names_of("full");
            let held = names_of("holdout10");
            assert!(!known
                .iter()
                .chain(&held)
                .any(|n| i.question.contains(n.as_str())));
        }
        for i in b.get("forget10_perturbed").unwrap() {
            assert_eq!(i.perturbed_answer.len(), 3);
            let p = i.paraphrased_answer.as_ref().unwrap();
            assert_ne!(p, &i.answer);
            assert!(!i.perturbed_answer.contains(p));
        }
        // same seed, same benchmark; another seed, another one
        let again = generate(&cfg);
        assert_eq!(again.get("full"), b.get("full"));
        let other = generate(&SynthConfig { seed: 1, ..cfg });
        assert_ne!(other.get("full"), b.get("full"));
    }
}
