//! The values metrics are written as (open-unlearning's layout): `{"agg_value": …,
//! "value_by_index": {"0": {…}, …}}`, and the typed outcome of a metric that cannot be
//! computed. Shared by the TOFU evaluation and the exclusive evaluation.
use serde_json::{json, Map, Value};

/// Why a metric has no value: a typed "skipped, because …" (written as `{"agg_value": null,
/// "skipped": reason}` and retried on the next run), or an error that stops the evaluation.
#[derive(Debug)]
pub enum Fail {
    Skip(String),
    Error(crate::error::Error),
}

impl Fail {
    pub fn skip(why: impl Into<String>) -> Fail {
        Fail::Skip(why.into())
    }
}

impl From<crate::error::Error> for Fail {
    fn from(e: crate::error::Error) -> Self {
        Fail::Error(e)
    }
}

impl From<candle_core::Error> for Fail {
    fn from(e: candle_core::Error) -> Self {
        Fail::Error(e.into())
    }
}

/// A metric's outcome: its value, or why it has none.
pub type Outcome = std::result::Result<Value, Fail>;

/// The entry of a skipped metric.
pub fn skipped(reason: &str) -> Value {
    json!({"agg_value": Value::Null, "skipped": reason})
}

/// Mean, NaN for an empty list (a metric over no items has no value, not 0).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// `{"agg_value": mean, "value_by_index": {"i": {"score": v_i}}}`.
pub fn per_item_scores(v: &[f64]) -> Value {
    let by: Map<String, Value> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| (i.to_string(), json!({"score": x})))
        .collect();
    json!({"agg_value": mean(v), "value_by_index": by})
}

/// `{"agg_value": agg, "value_by_index": {"i": vals[i]}}`.
pub fn by_index(vals: Vec<Value>, agg: f64) -> Value {
    let m: Map<String, Value> = vals
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i.to_string(), v))
        .collect();
    json!({"agg_value": agg, "value_by_index": m})
}

/// Per-item `score` values of a metric entry, in index order.
pub fn scores(v: &Value) -> Option<Vec<f64>> {
    let by = v.get("value_by_index")?.as_object()?;
    let mut items: Vec<(usize, f64)> = by
        .iter()
        .filter_map(|(k, x)| Some((k.parse().ok()?, x.get("score")?.as_f64()?)))
        .collect();
    items.sort_by_key(|x| x.0);
    Some(items.into_iter().map(|x| x.1).collect())
}

/// The aggregate of metric `name` among `done`.
pub fn agg(done: &Map<String, Value>, name: &str) -> Option<f64> {
    done.get(name).and_then(|v| v["agg_value"].as_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn mean_of_nothing_is_nan_and_scores_come_back_in_order() {
        assert!(mean(&[]).is_nan());
        let v = per_item_scores(&[0.5, 1.0, 0.0]);
        assert_eq!(v["agg_value"], 0.5);
        assert_eq!(scores(&v), Some(vec![0.5, 1.0, 0.0]));
    }
}
