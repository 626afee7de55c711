//! A method = gamma · forget term + alpha · retain term, selected by name (`method = "npo+gd"`)
//! or spelled out as a table:
//! ```toml
//! [method]
//! forget = { name = "npo", beta = 0.1 }
//! retain = { name = "kl" }
//! gamma = 1.0
//! alpha = 1.0
//! ```
//! Unknown names and keys fail when the config loads.
use serde::{Deserialize, Deserializer, Serialize};

use super::me::{Divergence, Positions};

fn d_beta_npo() -> f64 {
    0.1
}
fn d_beta_simnpo() -> f64 {
    2.5
}
fn d_one() -> f64 {
    1.0
}
fn d_rmu_coef() -> f64 {
    6.5
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum ForgetTerm {
    /// −nll_mean on D_f.
    Ga,
    /// −(2/β)·log σ(β·(nll_sum(θ) − nll_sum(ref))).
    Npo {
        #[serde(default = "d_beta_npo")]
        beta: f64,
    },
    /// −(2/β)·log σ(β·nll_mean(θ) − δ).
    Simnpo {
        #[serde(default = "d_beta_simnpo")]
        beta: f64,
        #[serde(default)]
        delta: f64,
    },
    /// nll_mean of a refusal given the forget question.
    Idk,
    /// DPO with the refusal preferred over the forget answer.
    Dpo {
        #[serde(default = "d_beta_npo")]
        beta: f64,
    },
    /// Divergence of the predictive distribution from uniform.
    Me {
        #[serde(default)]
        divergence: Divergence,
        #[serde(default)]
        positions: Positions,
    },
    /// Steer layer ℓ's residual toward c·u. `layer` unset: 7, or the model's last layer when it
    /// has fewer (METHODS.md); a layer given explicitly must exist.
    Rmu {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<usize>,
        #[serde(default = "d_rmu_coef")]
        steering_coef: f64,
    },
    /// Token-weighted GA, −mean_t(p_t^β·CE_t).
    Wga {
        #[serde(default = "d_one")]
        beta: f64,
    },
    /// UniErase: not a loss but an unlearning token plus a closed-form edit
    /// (`edit::unierase`); its settings are the keys of `UniEraseConfig`.
    Unierase(Box<crate::unlearn::edit::unierase::UniEraseConfig>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum RetainTerm {
    None,
    /// nll_mean on D_r.
    Gd,
    /// KL(p_ref ‖ p_θ) on retain answer positions (resident reference copy).
    Kl,
    /// −(1/β)·log σ(−β·(logπθ(y_idk|q_r) − logπθ(a_r|q_r))).
    Ap {
        #[serde(default = "d_beta_npo")]
        beta: f64,
    },
    /// ‖h_ℓ^θ − h_ℓ^ref‖²/d on retain inputs (layer of the RMU forget term).
    RmuRetain,
}

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
    pub optimizer: Option<crate::optim::OptimizerKind>,
    /// SIMU neuron selection: attribute MLP neurons on the forget set before training, then
    /// train attention projections in full and only the critical `down_proj` columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simu: Option<SimuSelect>,
}

fn d_steps() -> usize {
    8
}
fn d_half() -> f64 {
    0.5
}
fn d_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimuSelect {
    /// Integration steps m.
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// Critical iff score > threshold · layer max.
    #[serde(default = "d_half")]
    pub threshold: f64,
    /// Rank by |Att| (default) or the signed attribution.
    #[serde(default = "d_true")]
    pub absolute: bool,
    /// Leave out neurons that are critical for the retain set too.
    #[serde(default)]
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

impl crate::config::Validate for ForgetTerm {
    fn check(&self, c: &mut crate::config::Check) {
        match self {
            ForgetTerm::Ga | ForgetTerm::Idk | ForgetTerm::Me { .. } => {}
            ForgetTerm::Npo { beta } | ForgetTerm::Dpo { beta } => c.positive("beta", *beta),
            ForgetTerm::Simnpo { beta, delta } => {
                c.positive("beta", *beta);
                c.finite("delta", *delta);
            }
            // the layer is checked against the model when the run starts
            ForgetTerm::Rmu { steering_coef, .. } => c.positive("steering_coef", *steering_coef),
            ForgetTerm::Wga { beta } => c.non_negative("beta", *beta),
            ForgetTerm::Unierase(u) => u.check(c),
        }
    }
}

impl crate::config::Validate for RetainTerm {
    fn check(&self, c: &mut crate::config::Check) {
        if let RetainTerm::Ap { beta } = self {
            c.positive("beta", *beta);
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
        if self.gamma == 0.0 && (self.alpha == 0.0 || self.retain == RetainTerm::None) {
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

fn no_retain() -> RetainTerm {
    RetainTerm::None
}

/// Named combinations and their defaults.
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
    "fo-graddiff",
    "so-graddiff",
    "simu",
    "unierase",
    "exclusive",
    "exclusive-negce",
];

impl MethodConfig {
    /// A named combination ("npo+gd", "GA+KL", "GradDiff", …) with documented defaults.
    pub fn named(name: &str) -> Result<Self, String> {
        let n = name.trim().to_ascii_lowercase().replace(' ', "");
        // SIMU and its two baselines: GradDiff with gamma 1, alpha 2 (METHODS.md, SIMU step 3).
        let graddiff2 = |optimizer, simu| MethodConfig {
            forget: ForgetTerm::Ga,
            retain: RetainTerm::Gd,
            gamma: 1.0,
            alpha: 2.0,
            optimizer: Some(optimizer),
            simu,
        };
        use crate::optim::OptimizerKind;
        match n.as_str() {
            "fo-graddiff" => return Ok(graddiff2(OptimizerKind::Adamw, None)),
            "so-graddiff" => return Ok(graddiff2(OptimizerKind::Sophia, None)),
            "simu" => {
                return Ok(graddiff2(
                    OptimizerKind::Sophia,
                    Some(SimuSelect::default()),
                ))
            }
            // Exclusive Unlearning: λ·nll_mean(keep) + (1−λ)·uniform_ce(self-generated), λ = 0.6;
            // the forget set is the self-generated corpus, the retain set the keep corpus, so
            // λ is `alpha` and 1−λ is `gamma`. The Neg-CE ablation ascends the NLL instead.
            "exclusive" | "exclusive-negce" => {
                return Ok(MethodConfig {
                    forget: if n == "exclusive" {
                        ForgetTerm::Me {
                            divergence: Divergence::UniformCe,
                            positions: Positions::PromptAndAnswer,
                        }
                    } else {
                        ForgetTerm::Ga
                    },
                    retain: RetainTerm::Gd,
                    gamma: 0.4,
                    alpha: 0.6,
                    optimizer: None,
                    simu: None,
                })
            }
            _ => {}
        }
        let (f, r) = match n.as_str() {
            "graddiff" => ("ga", "gd"),
            "rmu" => ("rmu", "rmu_retain"),
            _ => match n.split_once('+') {
                Some((f, r)) => (f, r),
                None => (n.as_str(), "none"),
            },
        };
        let forget = match f {
            "ga" => ForgetTerm::Ga,
            "npo" => ForgetTerm::Npo { beta: 0.1 },
            "simnpo" => ForgetTerm::Simnpo {
                beta: 2.5,
                delta: 0.0,
            },
            "idk" => ForgetTerm::Idk,
            "dpo" => ForgetTerm::Dpo { beta: 0.1 },
            "me" => ForgetTerm::Me {
                divergence: Divergence::UniformCe,
                positions: Positions::PromptAndAnswer,
            },
            "rmu" => ForgetTerm::Rmu {
                layer: None,
                steering_coef: 6.5,
            },
            "wga" => ForgetTerm::Wga { beta: 1.0 },
            "unierase" => ForgetTerm::Unierase(Box::default()),
            _ => {
                return Err(format!(
                    "unknown method `{name}` (known: {})",
                    NAMED.join(", ")
                ))
            }
        };
        let retain = match r {
            "none" => RetainTerm::None,
            "gd" => RetainTerm::Gd,
            "kl" => RetainTerm::Kl,
            "ap" => RetainTerm::Ap { beta: 0.1 },
            "rmu_retain" => RetainTerm::RmuRetain,
            _ => {
                return Err(format!(
                    "unknown method `{name}` (known: {})",
                    NAMED.join(", ")
                ))
            }
        };
        // ME+GD: gamma = 0.1, alpha = 1 (METHODS.md); the others 1, 1.
        let gamma = if matches!(forget, ForgetTerm::Me { .. }) {
            0.1
        } else {
            1.0
        };
        Ok(MethodConfig {
            forget,
            retain,
            gamma,
            alpha: 1.0,
            optimizer: None,
            simu: None,
        })
    }

    /// Whether the forget term needs reference summed log-probs (precomputed once).
    pub fn needs_ref_scores(&self) -> bool {
        matches!(self.forget, ForgetTerm::Npo { .. } | ForgetTerm::Dpo { .. })
    }

    /// Whether a resident frozen reference model is needed (full distributions / hidden states).
    pub fn needs_resident_ref(&self) -> bool {
        matches!(self.retain, RetainTerm::Kl | RetainTerm::RmuRetain)
    }

    pub fn needs_refusals(&self) -> bool {
        matches!(self.forget, ForgetTerm::Idk | ForgetTerm::Dpo { .. })
            || matches!(self.retain, RetainTerm::Ap { .. })
    }

    pub fn needs_retain(&self) -> bool {
        !matches!(self.retain, RetainTerm::None)
    }
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
                .map_err(|e| D::Error::custom(e.to_string()))
        }
        toml::Value::Table(t) => MethodConfig::deserialize(toml::Value::Table(t))
            .map_err(|e| D::Error::custom(e.to_string())),
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
        assert_eq!(w.method.forget, ForgetTerm::Npo { beta: 0.1 });
        assert_eq!(w.method.retain, RetainTerm::Kl);
        assert_eq!(MethodConfig::named("me+gd").unwrap().gamma, 0.1);
        let w: W = toml::from_str("[method]\nforget = { name = \"simnpo\", beta = 4.0 }\nretain = { name = \"ap\" }\nalpha = 2.0").unwrap();
        assert_eq!(
            w.method.forget,
            ForgetTerm::Simnpo {
                beta: 4.0,
                delta: 0.0
            }
        );
        assert_eq!(w.method.alpha, 2.0);
        let w: W = toml::from_str("[method]\nname = \"GradDiff\"\nalpha = 2.0").unwrap();
        assert_eq!(
            (w.method.forget, w.method.retain, w.method.alpha),
            (ForgetTerm::Ga, RetainTerm::Gd, 2.0)
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
