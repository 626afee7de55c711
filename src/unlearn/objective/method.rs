//! A method = gamma · forget term + alpha · retain term, selected by name (`method = "npo+gd"`)
//! or spelled out as a table:
//! ```toml
//! [method]
//! forget = { name = "npo", beta = 0.1 }
//! retain = { name = "kl" }
//! gamma = 1.0
//! alpha = 1.0
//! ```
//! Any registered forget term combines with any retain term by name (`x+y`, `x` alone = no
//! retain term), with the terms' own defaults and γ = the forget term's default weight; the
//! [`PRESETS`] name the combinations the literature uses under other names or with other
//! weights. Unknown names and keys fail when the config loads.
use serde::{Deserialize, Deserializer, Serialize};

use super::me::{Divergence, Positions};
use super::{ForgetTerm, RetainTerm};
use crate::optim::OptimizerKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    pub forget: ForgetTerm,
    #[serde(default = "no_retain")]
    pub retain: RetainTerm,
    #[serde(default = "d_one")]
    pub gamma: f64,
    #[serde(default = "d_one")]
    pub alpha: f64,
    /// Overrides `train.optimizer` (set by the FO-/SO-GradDiff and SIMU presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerKind>,
    /// SIMU neuron selection: attribute MLP neurons on the forget set before training, then
    /// train attention projections in full and only the critical `down_proj` columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simu: Option<SimuSelect>,
}

fn d_one() -> f64 {
    1.0
}

fn no_retain() -> RetainTerm {
    RetainTerm::None(Default::default())
}

/// SIMU's neuron selection (METHODS.md, SIMU steps 1-2); its defaults are declared here once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimuSelect {
    /// Integration steps m.
    pub steps: usize,
    /// Critical iff score > threshold · layer max.
    pub threshold: f64,
    /// Rank by |Att| (default) or the signed attribution.
    pub absolute: bool,
    /// Leave out neurons that are critical for the retain set too.
    pub dual: bool,
}

impl Default for SimuSelect {
    fn default() -> Self {
        SimuSelect {
            steps: 8,
            threshold: 0.5,
            absolute: true,
            dual: false,
        }
    }
}

impl crate::config::Validate for SimuSelect {
    fn check(&self, c: &mut crate::config::Check) {
        c.at_least("steps", self.steps, 1);
        c.share("threshold", self.threshold);
    }
}

impl crate::config::Validate for MethodConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.sub("forget", &self.forget);
        c.sub("retain", &self.retain);
        c.non_negative("gamma", self.gamma);
        c.non_negative("alpha", self.alpha);
        let no_retain = matches!(self.retain, RetainTerm::None(_));
        if self.gamma == 0.0 && (self.alpha == 0.0 || no_retain) {
            c.fail(
                "gamma",
                "is 0 and there is no retain term to weigh: nothing to optimise",
            );
        }
        if let Some(s) = &self.simu {
            c.sub("simu", s);
        }
    }
}

/// A named method that is not just `forget+retain` with the terms' defaults.
pub struct Preset {
    pub name: &'static str,
    /// What it is, for `unlearn methods`.
    pub about: &'static str,
    pub build: fn() -> MethodConfig,
}

fn with(forget: ForgetTerm, retain: RetainTerm, gamma: f64, alpha: f64) -> MethodConfig {
    MethodConfig {
        forget,
        retain,
        gamma,
        alpha,
        optimizer: None,
        simu: None,
    }
}

fn term(name: &str) -> ForgetTerm {
    ForgetTerm::named(name).expect("a registered forget term")
}

fn keep(name: &str) -> RetainTerm {
    RetainTerm::named(name).expect("a registered retain term")
}

/// SIMU and its two baselines: GradDiff with γ = 1, α = 2 (METHODS.md, SIMU step 3).
fn graddiff2(optimizer: OptimizerKind, simu: Option<SimuSelect>) -> MethodConfig {
    MethodConfig {
        optimizer: Some(optimizer),
        simu,
        ..with(term("ga"), keep("gd"), 1.0, 2.0)
    }
}

/// Exclusive Unlearning: λ·nll_mean(keep) + (1−λ)·uniform_ce(self-generated), λ = 0.6; the forget
/// set is the self-generated corpus, the retain set the keep corpus, so λ is α and 1−λ is γ.
fn exclusive(forget: ForgetTerm) -> MethodConfig {
    with(forget, keep("gd"), 0.4, 0.6)
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "graddiff",
        about: "GA + GD",
        build: || with(term("ga"), keep("gd"), 1.0, 1.0),
    },
    Preset {
        name: "rmu",
        about: "RMU's forget and retain terms",
        build: || with(term("rmu"), keep("rmu_retain"), 1.0, 1.0),
    },
    Preset {
        name: "fo-graddiff",
        about: "GradDiff, gamma 1, alpha 2, AdamW (SIMU's first-order baseline)",
        build: || graddiff2(OptimizerKind::Adamw, None),
    },
    Preset {
        name: "so-graddiff",
        about: "GradDiff, gamma 1, alpha 2, Sophia (SIMU's second-order baseline)",
        build: || graddiff2(OptimizerKind::Sophia, None),
    },
    Preset {
        name: "simu",
        about: "SO-GradDiff on the attention projections and the critical down_proj columns",
        build: || graddiff2(OptimizerKind::Sophia, Some(SimuSelect::default())),
    },
    Preset {
        name: "satimp",
        about: "SatImp + GD, gamma 0.1, alpha 1 (open-unlearning's defaults)",
        build: || with(term("satimp"), keep("gd"), 0.1, 1.0),
    },
    Preset {
        name: "undial",
        about: "UNDIAL alone (open-unlearning's alpha = 0)",
        build: || with(term("undial"), keep("none"), 1.0, 1.0),
    },
    Preset {
        name: "ceu",
        about: "CE-U alone",
        build: || with(term("ceu"), keep("none"), 1.0, 1.0),
    },
    Preset {
        name: "unierase",
        about: "the unlearning token and the null-space edit (docs/unierase.md)",
        build: || with(term("unierase"), keep("none"), 1.0, 1.0),
    },
    Preset {
        name: "exclusive",
        about: "Exclusive Unlearning: ME (uniform CE over every token) on the self-generated corpus + GD on the keep set",
        build: || {
            exclusive(ForgetTerm::Me(super::me::Me {
                divergence: Divergence::UniformCe,
                positions: Positions::PromptAndAnswer,
            }))
        },
    },
    Preset {
        name: "exclusive-negce",
        about: "Exclusive Unlearning's ablation: gradient ascent instead of ME",
        build: || exclusive(term("ga")),
    },
];

/// The names `unlearn methods` lists and the tests run: every preset and the common
/// combinations (any other `forget+retain` of registered terms works too).
pub const NAMED: &[&str] = &[
    "ga",
    "ga+gd",
    "graddiff",
    "ga+kl",
    "npo",
    "npo+gd",
    "npo+kl",
    "simnpo+gd",
    "idk+gd",
    "idk+kl",
    "idk+ap",
    "dpo+gd",
    "dpo+kl",
    "me+gd",
    "rmu",
    "wga",
    "wga+gd",
    "satimp",
    "undial",
    "ceu",
    "fo-graddiff",
    "so-graddiff",
    "simu",
    "unierase",
    "exclusive",
    "exclusive-negce",
];

impl MethodConfig {
    /// A named method ("npo+gd", "GA+KL", "GradDiff", a preset, …) with its defaults.
    pub fn named(name: &str) -> Result<Self, String> {
        let n = name.trim().to_ascii_lowercase().replace(' ', "");
        if let Some(p) = PRESETS.iter().find(|p| p.name == n) {
            return Ok((p.build)());
        }
        let unknown = || format!("unknown method `{name}` (known: {})", NAMED.join(", "));
        let (f, r) = n.split_once('+').unwrap_or((n.as_str(), "none"));
        let forget = ForgetTerm::named(f).ok_or_else(unknown)?;
        if matches!(forget, ForgetTerm::Unierase(_)) && r != "none" {
            return Err(unknown());
        }
        let retain = RetainTerm::named(r).ok_or_else(unknown)?;
        let gamma = forget.default_weight();
        Ok(with(forget, retain, gamma, retain_weight(r)))
    }

    pub fn needs(&self) -> super::Needs {
        self.forget.needs().union(self.retain.needs())
    }
}

fn retain_weight(name: &str) -> f64 {
    RetainTerm::named(name)
        .map(|r| r.default_weight())
        .unwrap_or(1.0)
}

/// Accepts a method name string or a table.
pub fn deserialize_method<'de, D: Deserializer<'de>>(d: D) -> Result<MethodConfig, D::Error> {
    use serde::de::Error;
    let v = toml::Value::deserialize(d)?;
    match v {
        toml::Value::String(s) => MethodConfig::named(&s).map_err(D::Error::custom),
        // { name = "ga+gd", alpha = 2.0 }: the named defaults, then the given keys replace theirs.
        toml::Value::Table(mut t) if t.contains_key("name") => {
            let name = t.remove("name").unwrap();
            let name = name
                .as_str()
                .ok_or_else(|| D::Error::custom("method.name must be a string"))?;
            let base = MethodConfig::named(name).map_err(D::Error::custom)?;
            let mut merged = match toml::Value::try_from(base).map_err(D::Error::custom)? {
                toml::Value::Table(b) => b,
                _ => unreachable!("a struct serialises to a table"),
            };
            for (k, v) in t {
                // a sub-table without a name (or with the default's name) refines the default
                // term (`--set method.forget.beta=0.2`); a differently named one replaces it
                let same_term = match (merged.get(&k), &v) {
                    (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                        o.get("name").is_none() || o.get("name") == b.get("name")
                    }
                    _ => false,
                };
                if same_term {
                    crate::config::merge(merged.get_mut(&k).unwrap(), v);
                } else {
                    merged.insert(k, v);
                }
            }
            MethodConfig::deserialize(toml::Value::Table(merged))
                .map_err(|e| D::Error::custom(crate::config::keyed(&e)))
        }
        toml::Value::Table(t) => MethodConfig::deserialize(toml::Value::Table(t))
            .map_err(|e| D::Error::custom(crate::config::keyed(&e))),
        other => Err(D::Error::custom(format!(
            "method must be a name or a table, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct W {
        #[serde(deserialize_with = "deserialize_method")]
        method: MethodConfig,
    }

    #[test]
    fn names_tables_and_errors() {
        for n in NAMED {
            MethodConfig::named(n).unwrap();
        }
        let w: W = toml::from_str("method = \"NPO+KL\"").unwrap();
        assert_eq!(
            w.method.forget,
            ForgetTerm::Npo(super::super::npo::Npo { beta: 0.1 })
        );
        assert_eq!(w.method.retain, RetainTerm::Kl(Default::default()));
        assert_eq!(MethodConfig::named("me+gd").unwrap().gamma, 0.1);
        let w: W = toml::from_str("[method]\nforget = { name = \"simnpo\", beta = 4.0 }\nretain = { name = \"ap\" }\nalpha = 2.0").unwrap();
        assert_eq!(
            w.method.forget,
            ForgetTerm::Simnpo(super::super::simnpo::Simnpo {
                beta: 4.0,
                delta: 0.0
            })
        );
        assert_eq!(w.method.alpha, 2.0);
        let w: W = toml::from_str("[method]\nname = \"GradDiff\"\nalpha = 2.0").unwrap();
        assert_eq!(
            (w.method.forget, w.method.retain, w.method.alpha),
            (
                ForgetTerm::Ga(Default::default()),
                RetainTerm::Gd(Default::default()),
                2.0
            )
        );
        let e = toml::from_str::<W>("[method]\nname = \"ga+gd\"\nalpah = 2.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alpah"), "{e}");
        let e = toml::from_str::<W>("method = \"foo+gd\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown method `foo+gd`"), "{e}");
        let e = toml::from_str::<W>("[method]\nforget = { name = \"npo\", betta = 1 }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("betta"), "{e}");
        let e = toml::from_str::<W>("[method]\nforget = { name = \"xyz\" }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("xyz"), "{e}");
    }
}
