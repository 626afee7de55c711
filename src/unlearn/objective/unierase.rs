//! UniErase as a registered forget term: its table is the edit's configuration
//! ([`UniEraseConfig`]); it is not a loss, so `method = "unierase"` runs the token training and
//! the edit (`unlearn::run`) instead of the loss loop.
use candle_core::Tensor;

use super::{Ctx, Needs, Term};
use crate::error::{Error, Result};
use crate::unlearn::edit::unierase::UniEraseConfig;

impl Term for Box<UniEraseConfig> {
    const FORMULA: &'static str =
        "an edit, not a loss: [UNL] token + null-space-constrained MEMIT (docs/unierase.md)";
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn loss(&self, _c: &Ctx) -> Result<Tensor> {
        Err(Error::Invalid(
            "unierase is an edit, not a loss: run it with `unlearn run` alone".into(),
        ))
    }
}
