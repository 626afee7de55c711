//! The metrics of the evaluation suite, one small unit each. A metric declares its name (an
//! open-unlearning key, from [`super::names`]), what it needs ([`Info::needs`]) and computes
//! its entry from the shared [`Passes`] and the metrics before it. [`all`] lists them once, in
//! dependency order; `unlearn metrics` prints [`catalogue`].
//!
//! Adding a metric: one file here with a struct implementing [`Metric`] and its [`Info`], and
//! one line in [`all`].
use serde_json::{Map, Value};

use super::passes::Passes;
use super::value::Outcome;
use super::SetName;

mod embedding;
mod entailment;
mod generation;
mod gradnorm;
mod memorization;
mod mia;
mod privacy;
mod prob;
mod truth_ratio;
mod utility;

/// What a metric reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Teacher-forced stats of the answers.
    Answers,
    /// … of the paraphrased answers.
    Paraphrases,
    /// … of the perturbed answers.
    Perturbed,
    /// Greedy generations.
    Generations,
    /// The holdout set (MIA non-members).
    Holdout,
    /// The sentence encoder (`embedder`).
    SentenceEncoder,
    /// The refusal pool (`refusals`).
    RefusalPool,
    /// The NLI classifier (`nli`).
    Nli,
    /// The reference model (`reference_model`).
    ReferenceModel,
    /// The retain model's evaluation (`retain_logs`).
    RetainLog,
    /// A backward pass per item.
    Gradients,
    /// Other metrics' values.
    Metrics(&'static str),
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let s = match self {
            Need::Answers => "answer log-probs",
            Need::Paraphrases => "paraphrase log-probs",
            Need::Perturbed => "perturbed-answer log-probs",
            Need::Generations => "greedy generations",
            Need::Holdout => "holdout set",
            Need::SentenceEncoder => "sentence encoder (embedder)",
            Need::RefusalPool => "refusal pool",
            Need::Nli => "NLI model (nli)",
            Need::ReferenceModel => "reference model (reference_model)",
            Need::RetainLog => "retain log (retain_logs)",
            Need::Gradients => "a backward pass per item",
            Need::Metrics(m) => return write!(f, "metrics: {m}"),
        };
        f.write_str(s)
    }
}

/// What a metric is, for the catalogue.
pub struct Info {
    /// Its name; `{set}` stands for a set's prefix.
    pub name: &'static str,
    pub needs: &'static [Need],
    /// One line: what it computes.
    pub formula: &'static str,
    /// Where its reference implementation lives.
    pub reference: &'static str,
}

/// One metric of the suite.
pub trait Metric {
    /// The key it is written under.
    fn name(&self) -> String;
    fn info(&self) -> &'static Info;
    /// The set it is computed on, if it is a per-set metric.
    fn set(&self) -> Option<SetName> {
        None
    }
    /// Computed only when named in `extra_metrics` (costly metrics).
    fn opt_in(&self) -> bool {
        false
    }
    /// Its entry, from the passes and the metrics computed (or kept) so far.
    fn compute(&self, p: &mut Passes, done: &Map<String, Value>) -> Outcome;
}

/// Every metric, dependencies before the metrics derived from them.
pub fn all() -> Vec<Box<dyn Metric>> {
    use SetName::*;
    let mut v: Vec<Box<dyn Metric>> = vec![];
    for s in [Forget, Retain, Ra, Wf] {
        v.push(Box::new(prob::Prob(s)));
        if s.options() {
            v.push(Box::new(prob::PertProb(s)));
            v.push(Box::new(prob::NormProb(s)));
        } else {
            v.push(Box::new(prob::ParaProb(s)));
            v.push(Box::new(prob::PertProb(s)));
        }
        v.push(Box::new(truth_ratio::TruthRatio(s)));
        v.push(Box::new(generation::Rouge(s)));
        v.push(Box::new(generation::Entropy(s)));
        v.push(Box::new(embedding::Cosine(s)));
        v.push(Box::new(entailment::Entailment(s)));
        v.push(Box::new(embedding::Refusal(s)));
        if !s.options() {
            v.push(Box::new(memorization::ExactMem(s)));
            v.push(Box::new(memorization::Extraction(s)));
        }
    }
    for a in mia::Attack::ALL {
        v.push(Box::new(mia::Mia(a)));
    }
    v.push(Box::new(gradnorm::GradNorm));
    v.push(Box::new(privacy::PrivLeak));
    v.push(Box::new(privacy::ForgetQuality));
    v.push(Box::new(utility::ForgetEfficacy));
    v.push(Box::new(utility::ModelUtility));
    v.push(Box::new(utility::CloserLookUtility));
    v
}

/// One line of the catalogue: a metric and the sets it is computed on.
pub struct Entry {
    pub info: &'static Info,
    pub sets: Vec<SetName>,
    /// Computed only when named in `extra_metrics`.
    pub opt_in: bool,
}

/// Every metric once, with the sets it is computed on, in [`all`]'s order.
pub fn catalogue() -> Vec<Entry> {
    let mut out: Vec<Entry> = vec![];
    for m in all() {
        let info = m.info();
        match out.iter_mut().find(|e| std::ptr::eq(e.info, info)) {
            Some(e) => e.sets.extend(m.set()),
            None => out.push(Entry {
                info,
                sets: m.set().into_iter().collect(),
                opt_in: m.opt_in(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are unique, and every metric a derived metric reads comes before it.
    #[test]
    fn names_are_unique_and_dependencies_come_first() {
        let names: Vec<String> = all().iter().map(|m| m.name()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for (i, m) in all().iter().enumerate() {
            for n in m.info().needs {
                if let Need::Metrics(list) = n {
                    for dep in list.split(", ") {
                        if dep.contains(['{', ' ']) || !dep.contains('_') {
                            continue;
                        }
                        let j = names.iter().position(|x| x == dep);
                        assert!(j.is_some_and(|j| j < i), "{} needs {dep}", names[i]);
                    }
                }
            }
        }
        assert_eq!(catalogue().len(), 23);
    }
}
