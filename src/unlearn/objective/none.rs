//! No retain term (GA, NPO, … alone): L = 0.
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};
use crate::error::Result;

/// No retain term.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoRetain {}

impl Validate for NoRetain {
    fn check(&self, _c: &mut Check) {}
}

impl Term for NoRetain {
    const FORMULA: &'static str = "0";
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        Ok(Tensor::new(0f32, c.model.device())?)
    }
}
