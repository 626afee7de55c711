//! Learning-rate schedule: linear warm-up from 0 to `lr` over `warmup` steps, then linear decay
//! to 0 at `total` steps (`transformers`' `get_linear_schedule_with_warmup`), or constant.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub lr: f64,
    pub warmup: usize,
    pub total: usize,
    pub decay: bool,
}

impl Schedule {
    /// Learning rate for optimiser step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * step as f64 / self.warmup.max(1) as f64;
        }
        if !self.decay {
            return self.lr;
        }
        let rest = self.total.saturating_sub(self.warmup).max(1) as f64;
        self.lr * ((self.total.saturating_sub(step)) as f64 / rest).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn matches_transformers_linear_schedule() {
        // transformers: lr_lambda(s) = s/w for s < w, else max(0, (T - s) / (T - w)).
        let s = Schedule {
            lr: 1.0,
            warmup: 2,
            total: 10,
            decay: true,
        };
        let v: Vec<f64> = (0..11).map(|i| s.at(i)).collect();
        assert_eq!(
            v,
            vec![0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
        );
    }
}
