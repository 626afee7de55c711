//! A self-contained HTML report (`unlearn report DIR…`, and at the end of `unlearn demo`):
//! forget quality (log scale) against model utility, a metric table, the loss curves of the
//! unlearning runs and example generations per model. Inline SVG and CSS only; nothing is
//! fetched, so the file opens offline.
//!
//! Inputs are found by walking each directory (up to 4 levels) for `TOFU_EVAL.json`. An entry is
//! named after the directory that holds it (a trailing `/eval` dropped). Its loss curve comes from
//! the first `train_log.jsonl` found beside the evaluation, in its parent (`unlearn run`'s
//! `RUN_DIR/eval`), or in a sibling `run/` (the demo's layout).
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{read_json, Error, Result};
use crate::eval::names;

/// One evaluated model.
pub struct Entry {
    pub name: String,
    /// Where its TOFU_EVAL.json is.
    pub eval_dir: PathBuf,
    pub eval: Map<String, Value>,
    /// Lines of its train log (empty when none was found).
    pub train_log: Vec<Map<String, Value>>,
    /// Its `unlearn audit` (AUDIT.json in the evaluation directory, beside it, or in an `audit`
    /// directory beside it), when there is one.
    pub audit: Option<Value>,
}

impl Entry {
    pub fn agg(&self, metric: &str) -> Option<f64> {
        self.eval.get(metric)?.get("agg_value")?.as_f64()
    }
    fn item(&self, metric: &str, i: usize, key: &str) -> Option<String> {
        let v = self
            .eval
            .get(metric)?
            .get("value_by_index")?
            .get(i.to_string())?
            .get(key)?;
        Some(
            v.as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string()),
        )
    }
}

fn find_evals(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if dir.join(crate::eval::EVAL_FILE).is_file() {
        out.push(dir.to_path_buf());
    }
    if depth == 0 {
        return Ok(());
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    for s in subs {
        find_evals(&s, depth - 1, out)?;
    }
    Ok(())
}

fn read_log(p: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = crate::error::read_to_string(p)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Map<String, Value>>(l).ok())
        .collect())
}

/// Collect every evaluation under `dirs`: `target` first, `retain` second, then by name.
pub fn collect(dirs: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut entries = vec![];
    for root in dirs {
        if !root.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: not a directory",
                root.display()
            )));
        }
        let mut found = vec![];
        find_evals(root, 4, &mut found)?;
        for d in found {
            let rel = d.strip_prefix(root).unwrap_or(&d).to_path_buf();
            let mut name = rel.to_string_lossy().replace('\\', "/");
            if name == "eval" || name.is_empty() {
                name = root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into());
            } else if let Some(s) = name.strip_suffix("/eval") {
                name = s.to_string();
            }
            if dirs.len() > 1 {
                if let Some(r) = root.file_name() {
                    if name != r.to_string_lossy() {
                        name = format!("{}/{name}", r.to_string_lossy());
                    }
                }
            }
            let eval = read_json(&d.join(crate::eval::EVAL_FILE))?;
            let parent = d.parent().map(Path::to_path_buf).unwrap_or_default();
            let log = [
                d.join("train_log.jsonl"),
                parent.join("train_log.jsonl"),
                parent.join("run").join("train_log.jsonl"),
            ]
            .into_iter()
            .find(|p| p.is_file());
            let train_log = match log {
                Some(p) => read_log(&p)?,
                None => vec![],
            };
            let audit = [
                d.join("AUDIT.json"),
                parent.join("AUDIT.json"),
                parent.join("audit").join("AUDIT.json"),
            ]
            .into_iter()
            .find(|p| p.is_file())
            .map(|p| read_json::<Value>(&p))
            .transpose()?;
            entries.push(Entry {
                name,
                eval_dir: d,
                eval,
                train_log,
                audit,
            });
        }
    }
    if entries.is_empty() {
        return Err(Error::Invalid(format!(
            "no {} under {}",
            crate::eval::EVAL_FILE,
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let rank = |n: &str| {
        let last = n.rsplit('/').next().unwrap_or(n);
        match last {
            "target" => 0,
            "retain" => 1,
            _ => 2,
        }
    };
    entries.sort_by(|a, b| (rank(&a.name), a.name.as_str()).cmp(&(rank(&b.name), b.name.as_str())));
    Ok(entries)
}

/// HTML-escape text.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Distinct colours for up to 20 series (matplotlib's tab10, then darker and lighter tones): a
/// sweep over every method family has more than 10, and two methods must not share a colour.
const COLORS: [&str; 20] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#aec7e8",
    "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
];

pub fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

/// Metrics of the table, in order, with a short explanation.
const TABLE: [(&str, &str); 12] = [
    (
        names::FORGET_QUALITY,
        "KS p-value of forget truth ratios vs the retain model (higher: closer to retraining)",
    ),
    (
        names::MODEL_UTILITY,
        "harmonic mean of retain / real-authors / world-facts probability, ROUGE, truth ratio",
    ),
    (
        names::FORGET_ROUGE,
        "ROUGE-L recall of greedy answers to forget questions",
    ),
    (names::FORGET_PROB, "P(answer | question) on the forget set"),
    (names::FORGET_TRUTH_RATIO, "truth ratio on the forget set"),
    (names::RETAIN_ROUGE, "ROUGE-L recall on the retain set"),
    (names::RETAIN_PROB, "P(answer | question) on the retain set"),
    (
        names::EXTRACTION_STRENGTH,
        "forget set: fraction of answer suffix recoverable",
    ),
    (
        names::PRIVLEAK,
        "PrivLeak (Min-K% AUC vs the retain model's, in %; 0 = like retraining)",
    ),
    (names::MIA_MIN_K, "Min-K% ROC-AUC, forget vs holdout"),
    (
        names::FORGET_TOKEN_ENTROPY,
        "mean token entropy of forget generations",
    ),
    (
        names::FORGET_REFUSAL_RATE,
        "forget generations judged refusals",
    ),
];

fn fmt(metric: &str, v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if metric == names::FORGET_QUALITY => format!("{x:.2e}"),
        Some(x) if metric == names::PRIVLEAK => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
    }
}

/// Continual runs (`RUN_DIR/eval/task-K` of `unlearn run` with several tasks): the entries of
/// each run, by task number.
fn continual_runs(entries: &[Entry]) -> Vec<(String, Vec<(usize, &Entry)>)> {
    let mut runs: Vec<(String, Vec<(usize, &Entry)>)> = vec![];
    for e in entries {
        let Some((prefix, k)) = e.name.rsplit_once("/task-") else {
            continue;
        };
        let Ok(k) = k.parse::<usize>() else {
            continue;
        };
        let run = prefix.strip_suffix("/eval").unwrap_or(prefix).to_string();
        match runs.iter_mut().find(|r| r.0 == run) {
            Some(r) => r.1.push((k, e)),
            None => runs.push((run, vec![(k, e)])),
        }
    }
    runs.retain(|r| r.1.len() > 1);
    for r in runs.iter_mut() {
        r.1.sort_by_key(|x| x.0);
    }
    runs
}

/// Metrics in [0, 1] drawn across tasks in the continual panel.
const CONTINUAL_LINES: [&str; 5] = [
    names::MODEL_UTILITY,
    names::FORGET_ROUGE,
    names::FORGET_PROB,
    names::RETAIN_ROUGE,
    names::FORGET_TRUTH_RATIO,
];

/// One panel per continual run: every table metric after each task, and the [0, 1] metrics
/// as lines across tasks.
fn continual_html(entries: &[Entry]) -> String {
    let runs = continual_runs(entries);
    if runs.is_empty() {
        return String::new();
    }
    let mut s = String::from("<h2>Continual unlearning: metrics after each task</h2>");
    for (run, tasks) in runs {
        let cols: Vec<&(&str, &str)> = TABLE
            .iter()
            .filter(|(m, _)| tasks.iter().any(|(_, e)| e.eval.contains_key(*m)))
            .collect();
        let _ = write!(s, "<h3>{}</h3><table><tr><th>after task</th>", esc(&run));
        for (m, help) in &cols {
            let _ = write!(s, "<th title=\"{}\">{}</th>", esc(help), esc(m));
        }
        s += "</tr>";
        for (k, e) in &tasks {
            let _ = write!(s, "<tr><td>{k}</td>");
            for (m, _) in &cols {
                let _ = write!(s, "<td class=\"num\">{}</td>", fmt(m, e.agg(m)));
            }
            s += "</tr>";
        }
        s += "</table>";
        let (w, h, ml, mr, mt, mb) = (520.0, 240.0, 48.0, 170.0, 12.0, 36.0);
        let (pw, ph) = (w - ml - mr, h - mt - mb);
        let n = tasks.len();
        let x = |i: usize| ml + pw * i as f64 / (n - 1).max(1) as f64;
        let y = |v: f64| mt + ph * (1.0 - v.clamp(0.0, 1.0));
        let _ = write!(
            s,
            "<svg width=\"{w}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">\
             <rect x=\"{ml}\" y=\"{mt}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\">1</text><text x=\"{}\" y=\"{}\" font-size=\"11\">0</text>",
            ml - 14.0,
            mt + 4.0,
            ml - 14.0,
            mt + ph + 4.0
        );
        for (i, (k, _)) in tasks.iter().enumerate() {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{k}</text>",
                x(i),
                mt + ph + 16.0
            );
        }
        let mut li = 0;
        for m in CONTINUAL_LINES {
            let pts: Vec<String> = tasks
                .iter()
                .enumerate()
                .filter_map(|(i, (_, e))| e.agg(m).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
                .collect();
            if pts.len() < 2 {
                continue;
            }
            let c = color(li);
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{c}\">{}</text>",
                pts.join(" "),
                ml + pw + 8.0,
                mt + 14.0 * (li as f64 + 1.0),
                esc(m)
            );
            li += 1;
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">task</text></svg>",
            ml + pw / 2.0,
            h - 4.0
        );
    }
    s
}

/// Forget quality (log₁₀, y) against model utility (x), one labelled point per entry.
pub fn scatter_svg(entries: &[Entry]) -> String {
    let (w, h, ml, mr, mt, mb) = (660.0, 400.0, 64.0, 150.0, 20.0, 48.0);
    let pts: Vec<(usize, f64, f64)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let fq = e.agg(names::FORGET_QUALITY)?;
            let mu = e.agg(names::MODEL_UTILITY)?;
            (fq > 0.0 && fq.is_finite() && mu.is_finite()).then(|| (i, mu, fq.log10()))
        })
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="forget quality vs model utility">"#
    );
    if pts.is_empty() {
        s += r#"<text x="20" y="40">no model has both forget quality and model utility</text></svg>"#;
        return s;
    }
    // model utility is in [0, 1]: a fixed axis keeps reports comparable
    let xmax = 1.0;
    let ymin = pts
        .iter()
        .map(|p| p.2)
        .fold(0.0f64, f64::min)
        .floor()
        .min(-1.0);
    let x = |v: f64| ml + (v / xmax) * (w - ml - mr);
    let y = |v: f64| mt + (v / ymin) * (h - mt - mb);
    // axes and grid
    let _ = write!(
        s,
        r##"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        w - ml - mr,
        h - mt - mb
    );
    let mut d = 0.0;
    while d >= ymin {
        let yy = y(d);
        let _ = write!(
            s,
            r##"<line x1="{ml}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">1e{d}</text>"##,
            w - mr,
            ml - 6.0,
            yy + 4.0
        );
        d -= if ymin < -12.0 { 2.0 } else { 1.0 };
    }
    let steps = 5;
    for k in 0..=steps {
        let v = xmax * k as f64 / steps as f64;
        let xx = x(v);
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{mt}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" font-size="11" text-anchor="middle">{v:.2}</text>"##,
            h - mb,
            h - mb + 16.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">model utility</text><text transform="translate(16,{}) rotate(-90)" font-size="13" text-anchor="middle">forget quality (log scale)</text>"#,
        ml + (w - ml - mr) / 2.0,
        h - 10.0,
        mt + (h - mt - mb) / 2.0
    );
    // points (hover for values) and a legend in the right margin: labels beside points collide
    for (k, &(i, mu, lfq)) in pts.iter().enumerate() {
        let (cx, cy) = (x(mu), y(lfq));
        let _ = write!(
            s,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="6" fill="{c}" fill-opacity="0.85"><title>{n}: FQ {:.3e}, MU {:.3}</title></circle><rect x="{lx}" y="{ly:.1}" width="10" height="10" fill="{c}"/><text x="{tx}" y="{ty:.1}" font-size="12">{n}</text>"#,
            10f64.powf(lfq),
            mu,
            c = color(i),
            n = esc(&entries[i].name),
            lx = w - mr + 12.0,
            ly = mt + 4.0 + 18.0 * k as f64,
            tx = w - mr + 27.0,
            ty = mt + 13.0 + 18.0 * k as f64,
        );
    }
    s += "</svg>";
    s
}

/// The robustness table: one row per model with an audit, one column per attack (forget ROUGE,
/// forget probability in brackets), and the relearning attack's recovered share.
fn robustness_html(entries: &[Entry]) -> String {
    let audited: Vec<&Entry> = entries.iter().filter(|e| e.audit.is_some()).collect();
    if audited.is_empty() {
        return String::new();
    }
    let mut attacks: Vec<String> = vec![];
    for e in &audited {
        for k in e.audit.as_ref().unwrap()["attacks"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|x| x.0)
        {
            if k != "relearn_half" && !attacks.contains(k) {
                attacks.push(k.clone());
            }
        }
    }
    let f = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "–".into())
    };
    let mut s = String::from(
        "<h2>Robustness (unlearn audit)</h2><p class=\"note\">Forget ROUGE of each attack (forget \
         probability in brackets); higher than the plain question means the attack brings \
         forgotten knowledge back. Relearning: the share of the original model's forget \
         probability recovered on the held-out half.</p><table><tr><th>model</th>",
    );
    for a in &attacks {
        let _ = write!(s, "<th>{}</th>", esc(a));
    }
    s += "<th>relearning: recovered</th></tr>";
    for e in audited {
        let at = &e.audit.as_ref().unwrap()["attacks"];
        let _ = write!(s, "<tr><td>{}</td>", esc(&e.name));
        for a in &attacks {
            let _ = write!(
                s,
                "<td class=\"num\">{} ({})</td>",
                f(&at[a]["forget_rouge"]),
                f(&at[a]["forget_prob"])
            );
        }
        let _ = write!(
            s,
            "<td class=\"num\">{}</td></tr>",
            f(&at["relearn_half"]["recovered"])
        );
    }
    s += "</table>";
    s
}

/// Loss curves of one run: every `*loss` key of its train log against the step.
pub fn loss_svg(e: &Entry) -> Option<String> {
    let keys: Vec<&str> = ["loss", "forget_loss", "retain_loss"]
        .into_iter()
        .filter(|k| {
            e.train_log
                .iter()
                .any(|l| l.get(*k).is_some_and(Value::is_f64))
        })
        .collect();
    if keys.is_empty() {
        return None;
    }
    let series: Vec<(&str, Vec<(f64, f64)>)> = keys
        .iter()
        .map(|k| {
            let pts = e
                .train_log
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    let step = l
                        .get("step")
                        .and_then(Value::as_f64)
                        .unwrap_or(i as f64 + 1.0);
                    let v = l.get(*k)?.as_f64()?;
                    v.is_finite().then_some((step, v))
                })
                .collect();
            (*k, pts)
        })
        .collect();
    let all = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(a, b) in all {
        x0 = x0.min(a);
        x1 = x1.max(a);
        y0 = y0.min(b);
        y1 = y1.max(b);
    }
    if x0 > x1 {
        return None;
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let (w, h, ml, mr, mt, mb) = (360.0, 220.0, 52.0, 10.0, 24.0, 36.0);
    let x = |v: f64| ml + (v - x0) / (x1 - x0) * (w - ml - mr);
    let y = |v: f64| mt + (y1 - v) / (y1 - y0) * (h - mt - mb);
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="loss curve"><rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        w - ml - mr,
        h - mt - mb
    );
    for v in [y0, (y0 + y1) / 2.0, y1] {
        let _ = write!(
            s,
            r#"<text x="{}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"#,
            ml - 4.0,
            y(v) + 3.0,
            short(v)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{ml}" y="{}" font-size="10">step {}</text><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>"#,
        h - mb + 14.0,
        x0,
        w - mr,
        h - mb + 14.0,
        x1
    );
    for (k, (name, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/><text x="{}" y="14" font-size="11" fill="{}">{}</text>"#,
            color(k),
            path.join(" "),
            ml + 110.0 * k as f64,
            color(k),
            name
        );
    }
    s += "</svg>";
    Some(s)
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Example generations: for the first `n` items of `metric` (a `*_Q_A_ROUGE` entry), the
/// question, the ground truth and every model's answer.
fn generations_html(entries: &[Entry], metric: &str, n: usize) -> String {
    let Some(first) = entries
        .iter()
        .find(|e| e.item(metric, 0, "input").is_some())
    else {
        return "<p>no generations recorded</p>".into();
    };
    let mut s = String::new();
    for i in 0..n {
        let Some(q) = first.item(metric, i, "input") else {
            break;
        };
        let gt = first.item(metric, i, "ground_truth").unwrap_or_default();
        let _ = write!(
            s,
            "<div class=\"gen\"><p><b>Q:</b> {}<br><b>ground truth:</b> {}</p><table><tr><th>model</th><th>answer</th><th>ROUGE-L recall</th></tr>",
            esc(&q),
            esc(&gt)
        );
        for e in entries {
            if let Some(g) = e.item(metric, i, "generation") {
                let r = e
                    .item(metric, i, "rougeL_recall")
                    .and_then(|r| r.parse::<f64>().ok())
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_default();
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{r}</td></tr>",
                    esc(&e.name),
                    esc(&g)
                );
            }
        }
        s += "</table></div>";
    }
    s
}

/// The whole report.
pub fn render(entries: &[Entry], title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 13px; vertical-align: top; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.curves {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.curves figure {{ margin: 0; }}
.gen {{ margin-bottom: 18px; }}
.note {{ color: #666; font-size: 13px; }}
</style></head><body>
<h1>{t}</h1>
<p class="note">Generated by unlearn {v}. Forget quality: the Kolmogorov–Smirnov p-value comparing the
forget-set truth ratios of a model with those of the retain model (trained without the forget set);
1.0 for the retain model itself, tiny for a model that still knows the forget set.</p>
<h2>Forget quality vs model utility</h2>
"#,
        t = esc(title),
        v = crate::VERSION
    );
    s += &scatter_svg(entries);
    let not_plotted: Vec<&str> = entries
        .iter()
        .filter(|e| e.agg(names::FORGET_QUALITY).is_none() || e.agg(names::MODEL_UTILITY).is_none())
        .map(|e| e.name.as_str())
        .collect();
    if !not_plotted.is_empty() {
        let _ = write!(
            s,
            "<p class=\"note\">not plotted (no forget quality or model utility): {}</p>",
            esc(&not_plotted.join(", "))
        );
    }
    s += "<h2>Metrics</h2><table><tr><th>model</th>";
    let cols: Vec<&(&str, &str)> = TABLE
        .iter()
        .filter(|(m, _)| entries.iter().any(|e| e.eval.contains_key(*m)))
        .collect();
    for (m, help) in &cols {
        let _ = write!(s, "<th title=\"{}\">{}</th>", esc(help), esc(m));
    }
    s += "</tr>";
    for e in entries {
        let _ = write!(s, "<tr><td>{}</td>", esc(&e.name));
        for (m, _) in &cols {
            let _ = write!(s, "<td class=\"num\">{}</td>", fmt(m, e.agg(m)));
        }
        s += "</tr>";
    }
    s += "</table>";
    let skipped: Vec<String> = entries
        .iter()
        .flat_map(|e| {
            e.eval.iter().filter_map(move |(k, v)| {
                v.get("skipped")
                    .map(|r| format!("{}: {k} ({})", e.name, r.as_str().unwrap_or_default()))
            })
        })
        .collect();
    if !skipped.is_empty() {
        let _ = write!(
            s,
            "<details><summary>{} skipped metric(s)</summary><ul>{}</ul></details>",
            skipped.len(),
            skipped
                .iter()
                .map(|x| format!("<li>{}</li>", esc(x)))
                .collect::<String>()
        );
    }
    s += &robustness_html(entries);
    s += &continual_html(entries);
    s += "<h2>Loss curves</h2><div class=\"curves\">";
    let mut any = false;
    for e in entries {
        if let Some(svg) = loss_svg(e) {
            any = true;
            let _ = write!(
                s,
                "<figure>{svg}<figcaption>{}</figcaption></figure>",
                esc(&e.name)
            );
        }
    }
    if !any {
        s += "<p>no train logs found</p>";
    }
    s += "</div><h2>Example generations: forget set</h2>";
    s += &generations_html(entries, names::FORGET_ROUGE, 3);
    s += "<h2>Example generations: retain set</h2>";
    s += &generations_html(entries, names::RETAIN_ROUGE, 3);
    s += "</body></html>\n";
    s
}

#[cfg(test)]
mod tests {

    /// Regression: with 11 method families in one sweep (the SmolLM2 study), the 10-colour
    /// palette gave GA+GD and UniErase the same colour in the Pareto plot. Up to 20 series now
    /// get distinct colours.
    #[test]
    fn twenty_series_get_distinct_colours() {
        let cs: std::collections::HashSet<&str> = (0..20).map(color).collect();
        assert_eq!(cs.len(), 20);
    }

    use super::*;
    use serde_json::json;

    fn entry(name: &str, fq: f64, mu: f64) -> Entry {
        let eval = json!({
            "forget_quality": {"agg_value": fq},
            "model_utility": {"agg_value": mu},
            "forget_Q_A_ROUGE": {"agg_value": 0.5, "value_by_index": {
                "0": {"input": "Who is <X>?", "ground_truth": "A & B", "generation": "C", "rougeL_recall": 0.25}}},
            "privleak": {"agg_value": null, "skipped": "no retain log"},
        });
        Entry {
            name: name.into(),
            eval_dir: PathBuf::new(),
            eval: eval.as_object().unwrap().clone(),
            train_log: vec![
                json!({"step": 1, "loss": 2.0, "forget_loss": 1.5})
                    .as_object()
                    .unwrap()
                    .clone(),
                json!({"step": 2, "loss": 1.0, "forget_loss": 0.5})
                    .as_object()
                    .unwrap()
                    .clone(),
            ],
            audit: None,
        }
    }

    #[test]
    fn report_escapes_and_plots_every_point() {
        let es = vec![
            entry("target", 1e-6, 0.6),
            entry("retain", 1.0, 0.55),
            entry("npo<gd>", 0.01, 0.5),
        ];
        let html = render(&es, "t");
        // one circle per plotted model, placed by log10(FQ): retain (1e0) on the top edge
        assert_eq!(html.matches("<circle").count(), 3);
        assert!(html.contains("npo&lt;gd&gt;"));
        assert!(!html.contains("<X>") && html.contains("Who is &lt;X&gt;?"));
        assert!(html.contains("A &amp; B"));
        assert!(
            html.contains("1e-6"),
            "the y axis reaches the smallest FQ decade"
        );
        assert_eq!(
            html.matches("<polyline").count(),
            3 * 2,
            "loss + forget_loss per run"
        );
        assert!(html.contains("3 skipped metric(s)"));
        // balanced svg tags
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
        // y of a point with FQ = 1 is the top of the plot area (mt = 20)
        let svg = scatter_svg(&es[1..2]);
        assert!(svg.contains(r#"cy="20.0""#), "{svg}");
    }

    /// Issue #26: a continual run's per-task evaluations get a panel (a row per task, in task
    /// order, and a line per [0, 1] metric); single evaluations get none.
    #[test]
    fn continual_panel_orders_tasks() {
        let es = vec![
            entry("c.run/eval/task-10", 0.3, 0.5),
            entry("c.run/eval/task-2", 0.2, 0.6),
            entry("c.run/eval/task-1", 0.1, 0.7),
            entry("other", 0.1, 0.7),
        ];
        let html = render(&es, "t");
        let sec = html
            .split("Continual unlearning")
            .nth(1)
            .unwrap()
            .split("</svg>")
            .next()
            .unwrap();
        assert!(sec.contains("<h3>c.run</h3>"));
        let rows: Vec<&str> = sec
            .split("<tr><td>")
            .skip(1)
            .map(|r| r.split('<').next().unwrap())
            .collect();
        assert_eq!(rows, ["1", "2", "10"]);
        // model_utility and forget ROUGE have values on every task
        assert_eq!(sec.matches("<polyline").count(), 2);
        assert!(!render(&es[3..], "t").contains("Continual unlearning"));
    }

    /// Issue #22: audited models get a robustness table, a row each, a column per attack.
    #[test]
    fn robustness_table_from_audits() {
        let mut a = entry("ga+gd", 0.1, 0.8);
        a.audit = Some(json!({"attacks": {
            "plain": {"forget_rouge": 0.5, "forget_prob": 0.2},
            "quantize_q4_0": {"forget_rouge": 0.625, "forget_prob": 0.25},
            "relearn_half": {"recovered": 0.125}}}));
        let b = entry("target", 0.001, 0.85);
        let html = render(&[b, a], "t");
        assert!(html.contains("<h2>Robustness (unlearn audit)</h2>"));
        assert!(html.contains("<th>quantize_q4_0</th>"));
        assert!(html.contains("<td class=\"num\">0.625 (0.250)</td>"));
        assert!(html.contains("<td class=\"num\">0.125</td>"));
        // only audited models get a row
        let sec = html
            .split("Robustness (unlearn audit)")
            .nth(1)
            .unwrap()
            .split("</table>")
            .next()
            .unwrap();
        assert_eq!(sec.matches("<tr>").count(), 2);
        assert!(!render(&[entry("x", 0.1, 0.8)], "t").contains("Robustness"));
    }
}
