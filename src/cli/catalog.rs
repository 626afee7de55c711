//! `unlearn methods` and `unlearn metrics`: what the library registers, printed from the
//! registries themselves (the term units, the presets, the metric units), so the lists cannot
//! drift from the code.
use anyhow::Result;
use serde_json::{json, Value};
use unlearn::eval::exclusive::METRICS as EXCLUSIVE;
use unlearn::eval::metrics;
use unlearn::unlearn::objective::method::{MethodConfig, NAMED, PRESETS};
use unlearn::unlearn::objective::{ForgetTerm, RetainTerm, TermInfo};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn needs(v: &[&str]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join("; ")
    }
}

fn params(v: &Value) -> String {
    match v.as_object() {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

fn print_terms(title: &str, terms: &[TermInfo]) {
    println!("{title}");
    for t in terms {
        println!("  {:<12} {}", t.name, t.formula);
        println!(
            "  {:<12} params: {}; default weight {}; needs: {}",
            "",
            params(&t.params),
            t.default_weight,
            needs(&t.needs)
        );
    }
    println!();
}

pub fn methods(a: Args) -> Result<()> {
    let (forget, retain) = (ForgetTerm::catalogue(), RetainTerm::catalogue());
    let named: Vec<(&str, MethodConfig)> = NAMED
        .iter()
        .map(|n| Ok((*n, MethodConfig::named(n).map_err(anyhow::Error::msg)?)))
        .collect::<Result<_>>()?;
    if a.json {
        let methods: Vec<Value> = named
            .iter()
            .map(|(n, m)| {
                let preset = PRESETS.iter().find(|p| p.name == *n).map(|p| p.about);
                json!({"name": n, "about": preset, "method": m, "needs": m.needs().describe()})
            })
            .collect();
        let v = json!({"forget_terms": forget, "retain_terms": retain, "methods": methods});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("loss = gamma * forget term + alpha * retain term (method = \"forget+retain\", a preset, or a table)\n");
    print_terms("Forget terms ([method.forget], weight gamma):", &forget);
    print_terms("Retain terms ([method.retain], weight alpha):", &retain);
    println!("Methods (method = \"NAME\"; any other forget+retain pair of the terms works too):");
    for (n, m) in &named {
        let about = PRESETS
            .iter()
            .find(|p| p.name == *n)
            .map(|p| format!("  {}", p.about))
            .unwrap_or_default();
        let mut extra = String::new();
        if let Some(o) = &m.optimizer {
            extra += &format!(", optimizer {o:?}");
        }
        if m.simu.is_some() {
            extra += ", SIMU neuron selection";
        }
        println!(
            "  {n:<16} {} + {}, gamma {}, alpha {}{extra}{about}",
            m.forget.name(),
            m.retain.name(),
            m.gamma,
            m.alpha
        );
    }
    Ok(())
}

pub fn metrics(a: Args) -> Result<()> {
    let cat = metrics::catalogue();
    let sets = |e: &metrics::Entry| -> Vec<&str> { e.sets.iter().map(|s| s.prefix()).collect() };
    if a.json {
        let suite: Vec<Value> = cat
            .iter()
            .map(|e| {
                json!({"name": e.info.name, "sets": sets(e), "opt_in": e.opt_in,
                       "needs": e.info.needs.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                       "formula": e.info.formula, "reference": e.info.reference})
            })
            .collect();
        let exclusive: Vec<Value> = EXCLUSIVE
            .iter()
            .map(|(n, f)| json!({"name": n, "formula": f}))
            .collect();
        let muse: Vec<Value> = unlearn::eval::muse::METRICS
            .iter()
            .map(|(n, f)| json!({"name": n, "formula": f}))
            .collect();
        let tasks: Vec<Value> = unlearn::eval::harness::tasks::TASKS
            .iter()
            .map(|t| json!({"name": t.name, "dataset": t.dataset, "num_fewshot": t.num_fewshot}))
            .collect();
        let v = json!({"suite": suite, "exclusive": exclusive, "muse": muse, "general": tasks});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "Metrics of `unlearn eval` (TOFU_EVAL.json keys; {{set}} = forget, retain, ra, wf):\n"
    );
    for e in &cat {
        let on = sets(e);
        let on = if on.is_empty() {
            String::new()
        } else {
            format!(" [sets: {}]", on.join(", "))
        };
        let opt = if e.opt_in {
            " (opt-in: extra_metrics)"
        } else {
            ""
        };
        println!("  {}{on}{opt}", e.info.name);
        println!("      {}", e.info.formula);
        let n: Vec<String> = e.info.needs.iter().map(|n| n.to_string()).collect();
        println!("      needs: {}", n.join("; "));
        println!("      reference: {}", e.info.reference);
    }
    println!("\nMetrics of `unlearn eval --benchmark exclusive` (EXCLUSIVE_EVAL.json; Exclusive Unlearning):\n");
    for (n, f) in EXCLUSIVE {
        println!("  {n}\n      {f}");
    }
    println!("\nMetrics of `unlearn eval --benchmark muse --data DIR` (MUSE_EVAL.json):\n");
    for (n, f) in unlearn::eval::muse::METRICS {
        println!("  {n}\n      {f}");
    }
    println!(
        "\nGeneral-ability tasks (`unlearn eval --benchmark TASK --data DIR`, {{task}}_EVAL.json; \
         lm-evaluation-harness's definitions):\n"
    );
    for t in unlearn::eval::harness::tasks::TASKS {
        let m = match (t.kind, t.acc_norm) {
            (unlearn::eval::harness::tasks::Kind::MultipleChoice, true) => "acc, acc_norm",
            (unlearn::eval::harness::tasks::Kind::MultipleChoice, false) => "acc",
            _ => "exact_match, refusal_rate, answer_words",
        };
        println!(
            "  {:<16} {} ({}-shot by default): {m}",
            t.name, t.dataset, t.num_fewshot
        );
    }
    Ok(())
}
