//! Unlearning objectives: forget terms and retain terms, one unit per file. A unit is a struct
//! holding its parameters (their defaults declared once, in its `Default`), documenting its
//! formula, saying what it [`Needs`] besides the model and the forget items, and computing its
//! loss from a [`Ctx`]. The [`forget_terms!`]/[`retain_terms!`] lists below register them: one
//! line each makes a unit a `name = "…"` of `[method.forget]` / `[method.retain]` tables, part of
//! every `x+y` method name and of `unlearn methods`. Batch means are taken over items (rows),
//! token means over labelled positions.
pub mod ap;
pub mod ceu;
pub mod dpo;
pub mod ga;
pub mod gd;
pub mod idk;
pub mod kl;
pub mod me;
pub mod method;
pub mod none;
pub mod npo;
pub mod rmu;
pub mod satimp;
pub mod simnpo;
pub mod undial;
mod unierase;
pub mod wga;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::{Check, Validate};
use crate::data::Encoded;
use crate::error::{Error, Result};
use crate::infer::score::Batch;
use crate::model::Llama;

/// What a term reads besides the model and the forget items; the run prepares exactly this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Needs {
    /// A refusal paired with each forget question (IDK, DPO).
    pub forget_refusals: bool,
    /// A refusal paired with each retain partner's question (AP).
    pub retain_refusals: bool,
    /// Summed reference log-probabilities of the forget answers, computed once per task before
    /// training (NPO, DPO): no second model in memory.
    pub ref_answer_scores: bool,
    /// The same of the forget refusals (DPO).
    pub ref_refusal_scores: bool,
    /// A resident frozen copy of the reference model (KL, RMU's retain term, UNDIAL).
    pub reference_model: bool,
    /// Retain items paired with the forget items (every retain term but `none`).
    pub retain_set: bool,
    /// RMU's layer and control vector.
    pub rmu: bool,
}

impl Needs {
    pub fn union(self, o: Needs) -> Needs {
        Needs {
            forget_refusals: self.forget_refusals || o.forget_refusals,
            retain_refusals: self.retain_refusals || o.retain_refusals,
            ref_answer_scores: self.ref_answer_scores || o.ref_answer_scores,
            ref_refusal_scores: self.ref_refusal_scores || o.ref_refusal_scores,
            reference_model: self.reference_model || o.reference_model,
            retain_set: self.retain_set || o.retain_set,
            rmu: self.rmu || o.rmu,
        }
    }

    /// The needs as words (`unlearn methods`).
    pub fn describe(&self) -> Vec<&'static str> {
        let mut v = vec![];
        for (on, what) in [
            (self.retain_set, "retain set"),
            (self.forget_refusals, "refusals for forget questions"),
            (self.retain_refusals, "refusals for retain questions"),
            (self.ref_answer_scores, "reference scores of forget answers"),
            (self.ref_refusal_scores, "reference scores of refusals"),
            (self.reference_model, "resident reference model"),
            (self.rmu, "hidden states at the RMU layer"),
        ] {
            if on {
                v.push(what);
            }
        }
        v
    }
}

/// Everything a task's terms read, encoded once before training.
pub struct Task {
    /// The forget items' answers.
    pub forget: Vec<Encoded>,
    /// A refusal to each forget question (when a term needs it).
    pub forget_refusals: Vec<Encoded>,
    /// Retain partner (index into the retain set) of each forget item.
    pub retain_partner: Vec<usize>,
    /// How many retain items the partners were drawn from (the `retain` set, plus the later
    /// tasks' forget items with `retain_future_tasks`).
    pub retain_pool: usize,
    /// A refusal to each forget item's retain partner's question.
    pub retain_refusals: Vec<Encoded>,
    /// Summed reference log-probs of each forget answer / refusal.
    pub ref_answers: Vec<f32>,
    pub ref_refusals: Vec<f32>,
}

/// One micro-batch as the terms see it: forget items `idx` of a task, and whatever the terms
/// declared they need.
pub struct Ctx<'a> {
    pub model: &'a Llama,
    /// The resident frozen reference, when a term needs it.
    pub reference: Option<&'a Llama>,
    pub pad: u32,
    pub task: &'a Task,
    pub retain: &'a [Encoded],
    pub idx: &'a [usize],
    /// RMU's layer ℓ and control vector c·u.
    pub rmu: Option<(usize, &'a Tensor)>,
    /// `train.chunked_loss`: label log-probabilities through the chunked LM-head op.
    pub chunked: bool,
}

impl Ctx<'_> {
    /// [b] per-item mean answer NLL of the model on `b` (the GA, GD, IDK and SimNPO terms).
    pub fn nll_mean(&self, b: &Batch) -> Result<Tensor> {
        let n: Vec<f32> = b.n_labels.iter().map(|&n| n.max(1) as f32).collect();
        let n = Tensor::from_vec(n, b.n_labels.len(), b.input.device())?;
        Ok(self.sum_logprobs(b)?.neg()?.div(&n)?)
    }

    /// [b, L−1] log p(target) of the model at every position of `b` (not masked): from the
    /// logits, or through the chunked LM-head op with `train.chunked_loss`.
    pub fn logprobs(&self, b: &Batch) -> Result<Tensor> {
        if self.chunked {
            self.model.label_logprobs_chunked(&b.input, &b.targets)
        } else {
            crate::ops::gather_logprobs(&self.model.forward(&b.input)?, &b.targets)
        }
    }

    /// [b] Σ_t log p(a_t) of every answer of `b` (the NPO, DPO and AP terms).
    pub fn sum_logprobs(&self, b: &Batch) -> Result<Tensor> {
        Ok((self.logprobs(b)? * &b.mask)?.sum(1)?)
    }
    fn rows(&self, items: &[Encoded], idx: &[usize]) -> Result<Batch> {
        let refs: Vec<&Encoded> = idx.iter().map(|&i| &items[i]).collect();
        Batch::new(&refs, self.pad, self.model.device())
    }
    /// The forget answers of the micro-batch.
    pub fn forget(&self) -> Result<Batch> {
        self.rows(&self.task.forget, self.idx)
    }
    /// The refusals to the forget questions.
    pub fn forget_refusals(&self) -> Result<Batch> {
        self.rows(&self.task.forget_refusals, self.idx)
    }
    /// Indices of the retain partners of the micro-batch's items.
    pub fn partners(&self) -> Vec<usize> {
        self.idx
            .iter()
            .map(|&i| self.task.retain_partner.get(i).copied().unwrap_or(0))
            .collect()
    }
    /// The retain partners' answers.
    pub fn retain(&self) -> Result<Batch> {
        self.rows(self.retain, &self.partners())
    }
    /// The refusals to the retain partners' questions.
    pub fn retain_refusals(&self) -> Result<Batch> {
        self.rows(&self.task.retain_refusals, self.idx)
    }
    fn pick(&self, v: &[f32]) -> Result<Tensor> {
        let x: Vec<f32> = self.idx.iter().map(|&i| v[i]).collect();
        Ok(Tensor::from_vec(x, self.idx.len(), self.model.device())?)
    }
    /// [b] reference summed log-probs of the forget answers.
    pub fn ref_answers(&self) -> Result<Tensor> {
        self.pick(&self.task.ref_answers)
    }
    /// [b] reference summed log-probs of the forget refusals.
    pub fn ref_refusals(&self) -> Result<Tensor> {
        self.pick(&self.task.ref_refusals)
    }
    /// The resident reference model.
    pub fn reference(&self) -> Result<&Llama> {
        self.reference
            .ok_or_else(|| Error::Invalid("this term needs a resident reference model".into()))
    }
    /// RMU's layer and control vector.
    pub fn rmu(&self) -> Result<(usize, &Tensor)> {
        self.rmu
            .ok_or_else(|| Error::Invalid("this term needs RMU's layer and control vector".into()))
    }
}

/// A forget or retain term: its formula, what it needs, its loss.
pub trait Term: Default + Validate {
    /// One line: the formula, for `unlearn methods`.
    const FORMULA: &'static str;
    /// The weight its method gives it by default (γ of a forget term, α of a retain term).
    const WEIGHT: f64 = 1.0;
    fn needs(&self) -> Needs;
    /// The loss of the micro-batch, a scalar.
    fn loss(&self, c: &Ctx) -> Result<Tensor>;
}

/// A registered term as `unlearn methods` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct TermInfo {
    pub name: &'static str,
    pub formula: &'static str,
    /// The parameters and their defaults (TOML keys of the term's table).
    pub params: serde_json::Value,
    pub needs: Vec<&'static str>,
    pub default_weight: f64,
}

/// Register term units as the variants of a serde enum tagged by `name`, delegating to them:
/// `Variant = "name" => unit::Type`. Deserialised by hand rather than with `#[serde(tag)]`,
/// whose buffering loses the key of an error inside the term ("`method.forget`: invalid type"
/// instead of "`method.forget.beta`: ...").
macro_rules! terms {
    ($(#[$meta:meta])* $enum:ident { $($variant:ident = $name:literal => $ty:ty),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "name")]
        pub enum $enum {
            $(#[serde(rename = $name)] $variant($ty),)+
        }

        impl<'de> Deserialize<'de> for $enum {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                use serde::de::Error as _;
                let mut t = match toml::Value::deserialize(d)? {
                    toml::Value::Table(t) => t,
                    other => {
                        return Err(D::Error::custom(format!(
                            "a term is a table with a `name`, got {other}"
                        )))
                    }
                };
                let name = match t.remove("name") {
                    Some(toml::Value::String(s)) => s,
                    Some(other) => {
                        return Err(D::Error::custom(format!(
                            "`name` must be a string, got {other}"
                        )))
                    }
                    None => return Err(D::Error::missing_field("name")),
                };
                let body = toml::Value::Table(t);
                match name.as_str() {
                    $($name => body
                        .try_into::<$ty>()
                        .map($enum::$variant)
                        .map_err(|e| D::Error::custom(crate::config::keyed(&e))),)+
                    other => Err(D::Error::unknown_variant(other, &[$($name),+])),
                }
            }
        }

        impl $enum {
            /// Every registered term with its defaults.
            pub fn all() -> Vec<$enum> {
                vec![$($enum::$variant(<$ty>::default()),)+]
            }
            /// The term registered as `name`, with its defaults.
            pub fn named(name: &str) -> Option<$enum> {
                Self::all().into_iter().find(|t| t.name() == name)
            }
            /// Its registered name.
            pub fn name(&self) -> &'static str {
                match self {
                    $($enum::$variant(_) => $name,)+
                }
            }
            pub fn needs(&self) -> Needs {
                match self {
                    $($enum::$variant(t) => t.needs(),)+
                }
            }
            /// The loss of a micro-batch (a scalar).
            pub fn loss(&self, c: &Ctx) -> Result<Tensor> {
                match self {
                    $($enum::$variant(t) => t.loss(c),)+
                }
            }
            /// The default weight of a method built around it.
            pub fn default_weight(&self) -> f64 {
                match self {
                    $($enum::$variant(_) => <$ty as Term>::WEIGHT,)+
                }
            }
            /// Every registered term, described.
            pub fn catalogue() -> Vec<TermInfo> {
                Self::all()
                    .into_iter()
                    .map(|t| {
                        let mut params = serde_json::to_value(&t).unwrap_or_default();
                        if let Some(o) = params.as_object_mut() {
                            o.remove("name");
                        }
                        TermInfo {
                            name: t.name(),
                            formula: match &t {
                                $($enum::$variant(_) => <$ty as Term>::FORMULA,)+
                            },
                            params,
                            needs: t.needs().describe(),
                            default_weight: t.default_weight(),
                        }
                    })
                    .collect()
            }
        }

        impl Validate for $enum {
            fn check(&self, c: &mut Check) {
                match self {
                    $($enum::$variant(t) => t.check(c),)+
                }
            }
        }
    };
}

terms! {
    /// The forget term of a method (`[method.forget]`, `name = "…"`).
    ForgetTerm {
        Ga = "ga" => ga::Ga,
        Npo = "npo" => npo::Npo,
        Simnpo = "simnpo" => simnpo::Simnpo,
        Idk = "idk" => idk::Idk,
        Dpo = "dpo" => dpo::Dpo,
        Me = "me" => me::Me,
        Rmu = "rmu" => rmu::Rmu,
        Wga = "wga" => wga::Wga,
        Satimp = "satimp" => satimp::Satimp,
        Undial = "undial" => undial::Undial,
        Ceu = "ceu" => ceu::Ceu,
        Unierase = "unierase" => Box<crate::unlearn::edit::unierase::UniEraseConfig>,
    }
}

terms! {
    /// The retain term of a method (`[method.retain]`, `name = "…"`).
    RetainTerm {
        None = "none" => none::NoRetain,
        Gd = "gd" => gd::Gd,
        Kl = "kl" => kl::Kl,
        Ap = "ap" => ap::Ap,
        RmuRetain = "rmu_retain" => rmu::RmuRetain,
    }
}

/// Numerically stable log σ(x) = (x − |x|)/2 − log(1 + exp(−|x|)), element-wise. Written with
/// (x − |x|)/2 rather than min(x, 0) so the gradient is exact (σ(−x) = 1/2) at x = 0, where NPO
/// and DPO start (θ = ref): the kinks of the two parts cancel whichever one-sided derivative of
/// |x| autograd takes at 0.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let a = x.abs()?;
    let soft = (a.neg()?.exp()? + 1.0)?.log()?;
    Ok((((x - &a)? * 0.5)? - soft)?)
}

#[cfg(test)]
pub(crate) mod testutil {
    use candle_core::{Device, Tensor, Var};

    pub fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// Central finite differences of a scalar function of one f64 vector against autograd.
    pub fn check_grad(x0: &[f64], f: impl Fn(&Tensor) -> Tensor) {
        let x = Var::new(x0, &Device::Cpu).unwrap();
        let g = f(x.as_tensor()).backward().unwrap();
        let ga = g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        for i in 0..x0.len() {
            let eps = 1e-6;
            let mut p = x0.to_vec();
            p[i] += eps;
            let mut m = x0.to_vec();
            m[i] -= eps;
            let fd = (f(&t(&p)).to_scalar::<f64>().unwrap()
                - f(&t(&m)).to_scalar::<f64>().unwrap())
                / (2.0 * eps);
            assert!(
                (fd - ga[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "d/dx[{i}]: fd {fd} autograd {}",
                ga[i]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn log_sigmoid_values_and_gradient() {
        // Reference: torch.nn.functional.logsigmoid([-50, -1, 0, 2, 40]).
        let v = log_sigmoid(&t(&[-50.0, -1.0, 0.0, 2.0, 40.0]))
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let want = [
            -50.0,
            -1.3132616875182228,
            -std::f64::consts::LN_2,
            -0.12692801104297263,
            -4.248354255291589e-18,
        ];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        check_grad(&[-3.0, -0.2, 0.0, 0.7, 5.0], |x| {
            log_sigmoid(x).unwrap().sum_all().unwrap()
        });
    }
}
