//! Issue #19: `unlearn methods` and `unlearn metrics` list everything the library registers,
//! the methods and the metric added with the restructuring included.
mod common;
use common::*;

use serde_json::Value;

fn json(cmd: &str) -> Value {
    let d = tempfile::tempdir().unwrap();
    serde_json::from_str(&ok(&[cmd, "--json"], d.path())).unwrap()
}

#[test]
fn methods_lists_every_term_and_named_method() {
    let v = json("methods");
    let names = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let forget = names("forget_terms");
    for t in [
        "ga", "npo", "simnpo", "idk", "dpo", "me", "rmu", "wga", "satimp", "undial", "ceu",
    ] {
        assert!(forget.contains(&t.to_string()), "forget term {t}");
    }
    assert!(names("retain_terms").contains(&"kl".to_string()));
    let methods = names("methods");
    for m in [
        "satimp",
        "undial",
        "ceu",
        "npo+gd",
        "simu",
        "unierase",
        "exclusive",
    ] {
        assert!(methods.contains(&m.to_string()), "method {m}");
    }
    // the defaults come from the units: SatImp's β1 = 5, γ = 0.1
    let satimp = v["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "satimp")
        .unwrap();
    assert_eq!(satimp["method"]["forget"]["beta1"], 5.0);
    assert_eq!(satimp["method"]["gamma"], 0.1);
    // text output too
    let d = tempfile::tempdir().unwrap();
    let text = ok(&["methods"], d.path());
    assert!(text.contains("undial") && text.contains("softmax(z_ref - beta onehot(y))"));
}

#[test]
fn metrics_lists_every_metric_with_its_needs_and_reference() {
    let v = json("metrics");
    let suite = v["suite"].as_array().unwrap();
    let find = |n: &str| {
        suite
            .iter()
            .find(|m| m["name"] == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    let g = find("mia_gradnorm");
    assert_eq!(g["opt_in"], true);
    assert!(g["reference"].as_str().unwrap().contains("gradnorm.py"));
    assert_eq!(find("forget_quality")["opt_in"], false);
    for n in [
        "{set}_Q_A_Prob",
        "{set}_entailment_score",
        "privleak",
        "closer_look_model_utility",
    ] {
        assert!(!find(n)["needs"].as_array().unwrap().is_empty(), "{n}");
    }
    assert!(v["exclusive"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "ood_loss"));
}
