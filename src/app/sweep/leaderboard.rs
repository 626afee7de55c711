//! The leaderboard of a sweep: per method, the best point under a stated rule, and every point
//! on a plot of forget quality against model utility with the Pareto front.
//!
//! The rule (`[select]`): among a method's finished points whose `utility_metric` is at least
//! `utility_floor` × the target model's, the one with the highest `metric` (ties: higher
//! utility, then the earlier point). The default is TOFU's practice, the highest forget quality
//! at a model utility of at least 0.95 × the target's; `also` lists more metrics chosen under the
//! same floor (default: closer-look's forget efficacy). A method with no point above the floor
//! is listed as such, with its best-utility point for reference.
use std::fmt::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{method_label, show_params, status, Point, Status, SweepConfig};
use crate::config::{Check, Validate};
use crate::error::{read_json, Result};
use crate::eval::names;
use crate::util::fs::atomic_write;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Select {
    /// The metric to maximise (a TOFU_SUMMARY.json key).
    pub metric: String,
    /// The utility the floor applies to.
    pub utility_metric: String,
    /// Fraction of the target model's utility a point must keep.
    pub utility_floor: f64,
    /// Further metrics chosen under the same floor (each its own choice per method).
    pub also: Vec<String>,
}

impl Default for Select {
    fn default() -> Self {
        Select {
            metric: names::FORGET_QUALITY.into(),
            utility_metric: names::MODEL_UTILITY.into(),
            utility_floor: 0.95,
            also: vec![names::FORGET_EFFICACY.into()],
        }
    }
}

impl Validate for Select {
    fn check(&self, c: &mut Check) {
        c.non_negative("utility_floor", self.utility_floor);
        c.non_empty("metric", &self.metric);
        c.non_empty("utility_metric", &self.utility_metric);
    }
}

/// A finished point.
#[derive(Debug, Clone)]
pub struct Row {
    pub hash: String,
    pub method: String,
    pub params: String,
    pub summary: Map<String, Value>,
    pub time_s: f64,
}

impl Row {
    pub fn get(&self, k: &str) -> Option<f64> {
        self.summary.get(k)?.as_f64().filter(|x| x.is_finite())
    }
}

/// The choice for one method under one metric.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// The best point above the floor (index into the rows).
    Best(usize),
    /// No point reaches the floor; the point with the highest utility, for reference.
    BelowFloor(Option<usize>),
}

/// Per method (in order of first appearance), the choice under `metric`.
pub fn choose(
    rows: &[Row],
    floor: Option<f64>,
    sel: &Select,
    metric: &str,
) -> Vec<(String, Choice)> {
    let mut methods: Vec<String> = vec![];
    for r in rows {
        if !methods.contains(&r.method) {
            methods.push(r.method.clone());
        }
    }
    methods
        .into_iter()
        .map(|m| {
            let mine: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].method == m).collect();
            let ok = |i: &usize| match (floor, rows[*i].get(&sel.utility_metric)) {
                (None, _) => true,
                (Some(f), Some(u)) => u >= f,
                (Some(_), None) => false,
            };
            let key = |i: usize| {
                (
                    rows[i].get(metric).unwrap_or(f64::NEG_INFINITY),
                    rows[i]
                        .get(&sel.utility_metric)
                        .unwrap_or(f64::NEG_INFINITY),
                )
            };
            let best = mine
                .iter()
                .copied()
                .filter(ok)
                .filter(|&i| rows[i].get(metric).is_some())
                .reduce(|a, b| if key(b) > key(a) { b } else { a });
            let choice = match best {
                Some(i) => Choice::Best(i),
                None => Choice::BelowFloor(mine.iter().copied().reduce(|a, b| {
                    let ua = rows[a]
                        .get(&sel.utility_metric)
                        .unwrap_or(f64::NEG_INFINITY);
                    let ub = rows[b]
                        .get(&sel.utility_metric)
                        .unwrap_or(f64::NEG_INFINITY);
                    if ub > ua {
                        b
                    } else {
                        a
                    }
                })),
            };
            (m, choice)
        })
        .collect()
}

/// What the sweep directory holds: the target's summary, finished rows, failed and pending
/// points.
pub struct Collected {
    pub target: Option<Map<String, Value>>,
    pub rows: Vec<Row>,
    pub failed: Vec<(String, String, String, String)>,
    pub pending: Vec<String>,
}

pub fn collect(cfg: &SweepConfig, points: &[Point]) -> Collected {
    let target = read_json(&cfg.out.join("target").join(crate::eval::SUMMARY_FILE)).ok();
    let mut c = Collected {
        target,
        rows: vec![],
        failed: vec![],
        pending: vec![],
    };
    for p in points {
        let dir = cfg.point_dir(&p.hash);
        let method = method_label(&p.config);
        let params = show_params(&p.params);
        match status(&dir) {
            Status::Done(m) => c.rows.push(Row {
                hash: p.hash.clone(),
                method,
                params,
                summary: m
                    .get("summary")
                    .and_then(|s| s.as_object())
                    .cloned()
                    .unwrap_or_default(),
                time_s: m.get("time_s").and_then(|t| t.as_f64()).unwrap_or(f64::NAN),
            }),
            Status::Failed(e) => c.failed.push((p.hash.clone(), method, params, e)),
            Status::Pending => c.pending.push(p.hash.clone()),
        }
    }
    c
}

const COLUMNS: [(&str, &str); 5] = [
    (names::FORGET_QUALITY, "FQ"),
    (names::MODEL_UTILITY, "MU"),
    (names::FORGET_ROUGE, "forget ROUGE"),
    (names::FORGET_EFFICACY, "FE"),
    (names::FORGET_REFUSAL_RATE, "refusal rate"),
];

fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e4) => format!("{x:.3e}"),
        Some(x) => format!("{x:.4}"),
    }
}

/// Write LEADERBOARD.json, LEADERBOARD.md and leaderboard.html into the sweep directory;
/// returns the JSON.
pub fn write(cfg: &SweepConfig, points: &[Point]) -> Result<Value> {
    let c = collect(cfg, points);
    let sel = &cfg.select;
    let target_u = c
        .target
        .as_ref()
        .and_then(|t| t.get(&sel.utility_metric)?.as_f64());
    let floor = target_u.map(|u| u * sel.utility_floor);
    let rule = format!(
        "per method, the highest `{}` among finished points with `{}` >= {} x the target model's ({}){}",
        sel.metric,
        sel.utility_metric,
        sel.utility_floor,
        num(target_u),
        if floor.is_none() { "; the target model has no utility value, so no floor applies" } else { "" }
    );
    let mut md = format!("# Leaderboard\n\nRule: {rule}.\n\n");
    let mut choices = Map::new();
    for metric in std::iter::once(&sel.metric).chain(sel.also.iter()) {
        let ch = choose(&c.rows, floor, sel, metric);
        let _ = writeln!(md, "## Best by `{metric}`\n");
        let _ = writeln!(
            md,
            "| method | hyperparameters | {} | time (s) | point |",
            COLUMNS.map(|c| c.1).join(" | ")
        );
        let _ = writeln!(md, "|---|---|{}---|---|", "---|".repeat(COLUMNS.len()));
        let mut list = vec![];
        for (m, choice) in &ch {
            let (i, note) = match choice {
                Choice::Best(i) => (Some(*i), ""),
                Choice::BelowFloor(i) => (*i, " (below the utility floor)"),
            };
            let Some(i) = i else { continue };
            let r = &c.rows[i];
            let cells: Vec<String> = COLUMNS.iter().map(|(k, _)| num(r.get(k))).collect();
            let _ = writeln!(
                md,
                "| {m}{note} | {} | {} | {:.0} | {} |",
                r.params,
                cells.join(" | "),
                r.time_s,
                r.hash
            );
            list.push(json!({
                "method": m,
                "meets_floor": matches!(choice, Choice::Best(_)),
                "point": r.hash,
                "hyperparameters": r.params,
                "metrics": COLUMNS.iter().map(|(k, _)| (k.to_string(), json!(r.get(k)))).collect::<Map<_, _>>(),
                "time_s": r.time_s,
            }));
        }
        md.push('\n');
        choices.insert(metric.clone(), Value::Array(list));
    }
    if let Some(t) = &c.target {
        let cells: Vec<String> = COLUMNS
            .iter()
            .map(|(k, n)| format!("{n} {}", num(t.get(*k).and_then(|v| v.as_f64()))))
            .collect();
        let _ = writeln!(md, "Target model: {}.\n", cells.join(", "));
    }
    let _ = writeln!(
        md,
        "{} points: {} finished, {} failed, {} not run yet.",
        points.len(),
        c.rows.len(),
        c.failed.len(),
        c.pending.len()
    );
    for (h, m, p, e) in &c.failed {
        let _ = writeln!(md, "- failed: {h} ({m}; {p}): {e}");
    }
    let all: Vec<Value> = c
        .rows
        .iter()
        .map(|r| json!({ "point": r.hash, "method": r.method, "hyperparameters": r.params, "summary": r.summary, "time_s": r.time_s }))
        .collect();
    let doc = json!({
        "rule": { "text": rule, "metric": sel.metric, "utility_metric": sel.utility_metric,
                  "utility_floor": sel.utility_floor, "also": sel.also,
                  "target_utility": target_u, "floor": floor },
        "best": choices,
        "points": all,
        "failed": c.failed.iter().map(|(h, m, p, e)| json!({"point": h, "method": m, "hyperparameters": p, "error": e})).collect::<Vec<_>>(),
        "pending": c.pending,
    });
    let out = &cfg.out;
    atomic_write(&out.join("LEADERBOARD.md"), md.as_bytes())?;
    atomic_write(
        &out.join("LEADERBOARD.json"),
        serde_json::to_string_pretty(&doc).unwrap().as_bytes(),
    )?;
    atomic_write(
        &out.join("leaderboard.html"),
        html(&c, floor, &md).as_bytes(),
    )?;
    Ok(doc)
}

/// Indices of the points no other point beats in both forget quality and utility.
pub fn pareto(pts: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..pts.len())
        .filter(|&i| {
            !pts.iter().enumerate().any(|(j, q)| {
                j != i && q.0 >= pts[i].0 && q.1 >= pts[i].1 && (q.0 > pts[i].0 || q.1 > pts[i].1)
            })
        })
        .collect();
    idx.sort_by(|a, b| pts[*a].0.total_cmp(&pts[*b].0));
    idx
}

fn html(c: &Collected, floor: Option<f64>, md: &str) -> String {
    use crate::app::report::{color, esc};
    let (w, h, ml, mr, mt, mb) = (720.0, 420.0, 64.0, 170.0, 20.0, 48.0);
    let rows: Vec<(usize, f64, f64)> = c
        .rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let fq = r.get(names::FORGET_QUALITY)?;
            let mu = r.get(names::MODEL_UTILITY)?;
            (fq > 0.0).then(|| (i, mu, fq.log10()))
        })
        .collect();
    let mut methods: Vec<&str> = vec![];
    for r in &c.rows {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    let ymin = rows.iter().map(|p| p.2).fold(-1.0f64, f64::min).floor();
    let x = |v: f64| ml + v.clamp(0.0, 1.0) * (w - ml - mr);
    let y = |v: f64| mt + (v / ymin) * (h - mt - mb);
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="forget quality vs model utility, every point"><rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        w - ml - mr,
        h - mt - mb
    );
    let mut d = 0.0;
    while d >= ymin {
        let _ = write!(
            s,
            r##"<line x1="{ml}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">1e{d}</text>"##,
            w - mr,
            ml - 6.0,
            y(d) + 4.0,
            yy = y(d)
        );
        d -= 1.0;
    }
    for k in 0..=5 {
        let v = k as f64 / 5.0;
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{v:.1}</text>"##,
            x(v),
            h - mb + 16.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">model utility</text><text transform="translate(16,{}) rotate(-90)" font-size="13" text-anchor="middle">forget quality (log scale)</text>"#,
        ml + (w - ml - mr) / 2.0,
        h - 8.0,
        mt + (h - mt - mb) / 2.0
    );
    if let Some(f) = floor {
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{mt}" y2="{}" stroke="#999" stroke-dasharray="4 3"><title>utility floor {f:.3}</title></line>"##,
            h - mb,
            xx = x(f)
        );
    }
    let front = pareto(&rows.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>());
    let path: Vec<String> = front
        .iter()
        .map(|&k| format!("{:.1},{:.1}", x(rows[k].1), y(rows[k].2)))
        .collect();
    if path.len() > 1 {
        let _ = write!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#333" stroke-width="1.5"><title>Pareto front</title></polyline>"##,
            path.join(" ")
        );
    }
    for &(i, mu, lfq) in &rows {
        let r = &c.rows[i];
        let m = methods.iter().position(|x| *x == r.method).unwrap_or(0);
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{}" fill-opacity="0.8"><title>{}: {} (FQ {:.3e}, MU {mu:.3})</title></circle>"#,
            x(mu),
            y(lfq),
            color(m),
            esc(&r.method),
            esc(&r.params),
            10f64.powf(lfq)
        );
    }
    for (m, name) in methods.iter().enumerate() {
        let yy = mt + 4.0 + 18.0 * m as f64;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{yy:.1}" width="10" height="10" fill="{}"/><text x="{}" y="{:.1}" font-size="12">{}</text>"#,
            w - mr + 12.0,
            color(m),
            w - mr + 27.0,
            yy + 9.0,
            esc(name)
        );
    }
    s += "</svg>";
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sweep leaderboard</title></head><body><h1>Sweep leaderboard</h1><p>Every finished point; the line is the Pareto front (no other point has both higher forget quality and higher utility); dashed: the utility floor.</p>{s}<pre>{}</pre></body></html>\n",
        esc(md)
    )
}

/// The leaderboard of a directory's sweep as it is now (for `unlearn sweep --report-only`).
pub fn write_for(dir: &Path) -> Result<Value> {
    let cfg = super::load_resolved(dir)?;
    let points = cfg.points()?;
    write(&cfg, &points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(m: &str, fq: f64, mu: f64) -> Row {
        let mut s = Map::new();
        s.insert(names::FORGET_QUALITY.into(), json!(fq));
        s.insert(names::MODEL_UTILITY.into(), json!(mu));
        Row {
            hash: format!("{m}-{fq}-{mu}"),
            method: m.into(),
            params: String::new(),
            summary: s,
            time_s: 1.0,
        }
    }

    /// Hand-made results: the highest forget quality above 0.95 x the target's utility wins;
    /// a method with nothing above the floor is reported with its best-utility point.
    #[test]
    fn choice_follows_the_rule() {
        let rows = vec![
            row("ga+gd", 0.9, 0.50), // best FQ but collapsed utility
            row("ga+gd", 0.2, 0.80),
            row("ga+gd", 0.3, 0.79),
            row("npo+gd", 0.01, 0.60),
            row("npo+gd", 0.02, 0.70),
            row("idk+ap", 0.4, 0.81),
            row("idk+ap", 0.4, 0.85), // tie on FQ: higher utility
        ];
        let sel = Select::default();
        let floor = Some(0.8 * 0.95); // target MU 0.8
        let ch = choose(&rows, floor, &sel, names::FORGET_QUALITY);
        assert_eq!(ch[0], ("ga+gd".into(), Choice::Best(2)));
        assert_eq!(ch[1], ("npo+gd".into(), Choice::BelowFloor(Some(4))));
        assert_eq!(ch[2], ("idk+ap".into(), Choice::Best(6)));
        // without a floor the collapsed point wins
        let ch = choose(&rows, None, &sel, names::FORGET_QUALITY);
        assert_eq!(ch[0].1, Choice::Best(0));
    }

    #[test]
    fn pareto_front() {
        let pts = [
            (0.5, -1.0),
            (0.8, -3.0),
            (0.6, -2.0),
            (0.4, -0.5),
            (0.7, -3.0),
        ];
        assert_eq!(pareto(&pts), vec![3, 0, 2, 1]);
    }
}
