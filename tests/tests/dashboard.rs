//! The Grafana dashboard (deploy/grafana/observer-apm.json) against the real observer.
//!
//! Without privileges: the JSON model is well formed (unique panel ids, a gridPos for every panel,
//! no overlap, every query on the `${datasource}` variable), every PromQL expression parses here
//! and passes `promtool check rules`, the recording rules it reads exist in
//! deploy/rules/apm.rules.yaml, and `kubectl kustomize deploy/grafana` ships it as a ConfigMap.
//!
//! As root: the observer runs with its default probes while a client pod calls a server pod over
//! HTTP and a process of the client pod exits with code 3; then every metric a query of the
//! dashboard names (targets, template variables and annotations) must be among the scraped series,
//! and every label a query groups by, matches on or asks `label_values` for must be on a sample of
//! the metrics it is used with. The lifecycle families that only an OOM kill or the Kubernetes API
//! produce (restarts, Warning events, replicas), which this test does not cause, are checked
//! against the observer's source instead: the family is encoded there with those label names.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use observer_tests::{
    metrics::{self, Sample},
    net::Bridge,
    observer::Observer,
    pod::Pod,
    random_hex, require_root, TempDir,
};
use serde_json::Value;

/// A small PromQL reader: enough of the grammar to know which metrics an expression selects and
/// which label names it uses where, with the scope of each use (the metrics below an
/// aggregation, the two sides of a binary operation). Grafana's `label_values(selector, label)`
/// is read too. Anything it does not know (an unknown function, a selector without a metric name)
/// is an error, so the checks never silently skip a part of a query.
mod promql {
    use std::collections::BTreeSet;

    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Ident(String),
        Str(String),
        /// A number, a duration or a Grafana variable used as a scalar.
        Num,
        /// `[...]`: a range or subquery; its contents (durations, `$__rate_interval`) are not
        /// needed.
        Range,
        Op(String),
        LParen,
        RParen,
        LBrace,
        RBrace,
        Comma,
    }

    fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
        let c: Vec<char> = s.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        let ident_char = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
        while i < c.len() {
            let ch = c[i];
            match ch {
                _ if ch.is_whitespace() => i += 1,
                '#' => {
                    while i < c.len() && c[i] != '\n' {
                        i += 1;
                    }
                }
                '(' | ')' | '{' | '}' | ',' => {
                    out.push(match ch {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '{' => Tok::LBrace,
                        '}' => Tok::RBrace,
                        _ => Tok::Comma,
                    });
                    i += 1;
                }
                '[' => {
                    let end = c[i..].iter().position(|&x| x == ']').ok_or("unclosed [")?;
                    out.push(Tok::Range);
                    i += end + 1;
                }
                '"' | '\'' | '`' => {
                    let mut v = String::new();
                    i += 1;
                    while i < c.len() && c[i] != ch {
                        if c[i] == '\\' && ch != '`' && i + 1 < c.len() {
                            i += 1;
                        }
                        v.push(c[i]);
                        i += 1;
                    }
                    if i == c.len() {
                        return Err("unclosed string".into());
                    }
                    i += 1;
                    out.push(Tok::Str(v));
                }
                '$' => {
                    // A Grafana variable outside a string or range stands for a scalar.
                    i += 1;
                    while i < c.len() && (ident_char(c[i]) || c[i] == '{' || c[i] == '}') {
                        i += 1;
                    }
                    out.push(Tok::Num);
                }
                _ if ch.is_ascii_digit()
                    || (ch == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
                {
                    while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                        // An exponent's sign: 1e-9.
                        if (c[i] == 'e' || c[i] == 'E') && matches!(c.get(i + 1), Some('+' | '-')) {
                            i += 1;
                        }
                        i += 1;
                    }
                    out.push(Tok::Num);
                }
                _ if ident_char(ch) => {
                    let start = i;
                    while i < c.len() && ident_char(c[i]) {
                        i += 1;
                    }
                    out.push(Tok::Ident(c[start..i].iter().collect()));
                }
                _ => {
                    let two: String = c[i..(i + 2).min(c.len())].iter().collect();
                    let op = if ["==", "!=", "=~", "!~", "<=", ">="].contains(&two.as_str()) {
                        two
                    } else if "+-*/%^<>=".contains(ch) {
                        ch.to_string()
                    } else {
                        return Err(format!("unexpected character {ch:?}"));
                    };
                    i += op.len();
                    out.push(Tok::Op(op));
                }
            }
        }
        Ok(out)
    }

    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const FUNCTIONS: &[&str] = &[
        "abs",
        "absent",
        "absent_over_time",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_quantile",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "predict_linear",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "time",
        "timestamp",
        "vector",
        "year",
    ];
    const SET_OPS: &[&str] = &["and", "or", "unless", "atan2"];

    /// Where a label name is used.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Kind {
        By,
        Without,
        Matcher,
        On,
        GroupLeft,
        LabelValues,
        LabelSource,
    }

    /// One use of a label name: it must be on a sample of one of `metrics`, unless an inner
    /// `label_replace`/`label_join` made it (`made`). Empty `metrics`: any metric.
    #[derive(Debug, Clone)]
    pub struct LabelUse {
        pub label: String,
        pub kind: Kind,
        pub metrics: BTreeSet<String>,
        pub made: BTreeSet<String>,
    }

    /// What an expression reads.
    #[derive(Debug, Default)]
    pub struct Analysis {
        pub metrics: BTreeSet<String>,
        pub functions: BTreeSet<String>,
        pub labels: Vec<LabelUse>,
    }

    #[derive(Default, Clone)]
    struct Scope {
        metrics: BTreeSet<String>,
        made: BTreeSet<String>,
        /// The value of a string literal.
        string: Option<String>,
    }

    impl Scope {
        fn union(mut self, o: Scope) -> Scope {
            self.metrics.extend(o.metrics);
            self.made.extend(o.made);
            self.string = None;
            self
        }
    }

    struct Parser {
        toks: Vec<Tok>,
        pos: usize,
        out: Analysis,
    }

    impl Parser {
        fn peek(&self) -> Option<&Tok> {
            self.toks.get(self.pos)
        }

        fn next(&mut self) -> Result<Tok, String> {
            let t = self.toks.get(self.pos).cloned().ok_or("unexpected end")?;
            self.pos += 1;
            Ok(t)
        }

        fn expect(&mut self, want: Tok) -> Result<(), String> {
            let t = self.next()?;
            if t == want {
                Ok(())
            } else {
                Err(format!(
                    "expected {want:?}, found {t:?} (token {})",
                    self.pos - 1
                ))
            }
        }

        fn is_ident(&self, names: &[&str]) -> bool {
            matches!(self.peek(), Some(Tok::Ident(n)) if names.contains(&n.as_str()))
        }

        fn use_labels(&mut self, labels: Vec<String>, kind: Kind, scope: &Scope) {
            for label in labels {
                self.out.labels.push(LabelUse {
                    label,
                    kind,
                    metrics: scope.metrics.clone(),
                    made: scope.made.clone(),
                });
            }
        }

        /// `( label, label, ... )`
        fn label_list(&mut self) -> Result<Vec<String>, String> {
            self.expect(Tok::LParen)?;
            let mut v = Vec::new();
            loop {
                match self.next()? {
                    Tok::RParen => return Ok(v),
                    Tok::Ident(l) => v.push(l),
                    Tok::Comma if !v.is_empty() => {}
                    t => return Err(format!("bad label list at {t:?}")),
                }
            }
        }

        fn grouping(&mut self) -> Result<Option<(Kind, Vec<String>)>, String> {
            let kind = match self.peek() {
                Some(Tok::Ident(n)) if n == "by" => Kind::By,
                Some(Tok::Ident(n)) if n == "without" => Kind::Without,
                _ => return Ok(None),
            };
            self.pos += 1;
            Ok(Some((kind, self.label_list()?)))
        }

        fn args(&mut self) -> Result<Vec<Scope>, String> {
            self.expect(Tok::LParen)?;
            let mut v = Vec::new();
            if self.peek() == Some(&Tok::RParen) {
                self.pos += 1;
                return Ok(v);
            }
            loop {
                v.push(self.expr()?);
                match self.next()? {
                    Tok::Comma => {}
                    Tok::RParen => return Ok(v),
                    t => return Err(format!("expected , or ) in arguments, found {t:?}")),
                }
            }
        }

        fn expr(&mut self) -> Result<Scope, String> {
            let mut scope = self.unary()?;
            loop {
                let binary = match self.peek() {
                    Some(Tok::Op(op)) => !["=~", "!~", "="].contains(&op.as_str()),
                    Some(Tok::Ident(n)) => SET_OPS.contains(&n.as_str()),
                    _ => false,
                };
                if !binary {
                    return Ok(scope);
                }
                self.pos += 1;
                if self.is_ident(&["bool"]) {
                    self.pos += 1;
                }
                let mut matching = Vec::new();
                if self.is_ident(&["on", "ignoring"]) {
                    self.pos += 1;
                    matching.push((Kind::On, self.label_list()?));
                }
                if self.is_ident(&["group_left", "group_right"]) {
                    self.pos += 1;
                    if self.peek() == Some(&Tok::LParen) {
                        matching.push((Kind::GroupLeft, self.label_list()?));
                    }
                }
                let rhs = self.unary()?;
                scope = scope.union(rhs);
                for (kind, labels) in matching {
                    self.use_labels(labels, kind, &scope);
                }
            }
        }

        fn unary(&mut self) -> Result<Scope, String> {
            if matches!(self.peek(), Some(Tok::Op(op)) if op == "-" || op == "+") {
                self.pos += 1;
            }
            let scope = self.primary()?;
            if self.peek() == Some(&Tok::Range) {
                self.pos += 1;
            }
            if self.is_ident(&["offset"]) {
                self.pos += 1;
                if matches!(self.peek(), Some(Tok::Op(op)) if op == "-") {
                    self.pos += 1;
                }
                self.expect(Tok::Num)?;
            }
            Ok(scope)
        }

        fn primary(&mut self) -> Result<Scope, String> {
            match self.next()? {
                Tok::Num => Ok(Scope::default()),
                Tok::Str(s) => Ok(Scope {
                    string: Some(s),
                    ..Scope::default()
                }),
                Tok::LParen => {
                    let s = self.expr()?;
                    self.expect(Tok::RParen)?;
                    Ok(s)
                }
                Tok::Ident(name) if name == "inf" || name == "nan" => Ok(Scope::default()),
                Tok::Ident(name) if AGGREGATIONS.contains(&name.as_str()) => {
                    self.out.functions.insert(name);
                    let before = self.grouping()?;
                    let scope = self
                        .args()?
                        .into_iter()
                        .fold(Scope::default(), Scope::union);
                    let after = self.grouping()?;
                    if let Some((kind, labels)) = before.or(after) {
                        self.use_labels(labels, kind, &scope);
                    }
                    Ok(scope)
                }
                Tok::Ident(name) if name == "label_values" => {
                    // Grafana: label_values(label) or label_values(selector, label).
                    self.out.functions.insert(name);
                    self.expect(Tok::LParen)?;
                    let scope = if matches!(self.toks.get(self.pos + 1), Some(Tok::RParen)) {
                        Scope::default()
                    } else {
                        let s = self.expr()?;
                        self.expect(Tok::Comma)?;
                        s
                    };
                    let Tok::Ident(label) = self.next()? else {
                        return Err("label_values: no label name".into());
                    };
                    self.expect(Tok::RParen)?;
                    self.use_labels(vec![label], Kind::LabelValues, &scope);
                    Ok(scope)
                }
                Tok::Ident(name) if self.peek() == Some(&Tok::LParen) => {
                    if !FUNCTIONS.contains(&name.as_str()) {
                        return Err(format!("unknown function {name}"));
                    }
                    let args = self.args()?;
                    let mut scope = args.iter().cloned().fold(Scope::default(), Scope::union);
                    if name == "label_replace" || name == "label_join" {
                        let strings: Vec<Option<String>> =
                            args.iter().map(|a| a.string.clone()).collect();
                        let dst = strings
                            .get(1)
                            .cloned()
                            .flatten()
                            .ok_or("no destination label")?;
                        let sources: Vec<String> = if name == "label_replace" {
                            strings.get(3).cloned().flatten().into_iter().collect()
                        } else {
                            strings.iter().skip(3).flatten().cloned().collect()
                        };
                        let inner = args[0].clone();
                        self.use_labels(sources, Kind::LabelSource, &inner);
                        scope.made.insert(dst);
                    }
                    self.out.functions.insert(name);
                    Ok(scope)
                }
                Tok::Ident(name) => {
                    // A selector: metric name, optional matchers.
                    let mut scope = Scope::default();
                    scope.metrics.insert(name);
                    if self.peek() == Some(&Tok::LBrace) {
                        self.pos += 1;
                        let mut labels = Vec::new();
                        loop {
                            match self.next()? {
                                Tok::RBrace => break,
                                Tok::Comma if !labels.is_empty() => {}
                                Tok::Ident(label) => {
                                    match self.next()? {
                                        Tok::Op(op)
                                            if ["=", "!=", "=~", "!~"].contains(&op.as_str()) => {}
                                        t => return Err(format!("bad matcher operator {t:?}")),
                                    }
                                    let Tok::Str(_) = self.next()? else {
                                        return Err(format!("matcher {label}: no string"));
                                    };
                                    labels.push(label);
                                }
                                t => return Err(format!("bad matcher at {t:?}")),
                            }
                        }
                        self.use_labels(labels, Kind::Matcher, &scope);
                    }
                    Ok(scope)
                }
                t => Err(format!("unexpected {t:?} (token {})", self.pos - 1)),
            }
        }
    }

    /// Reads one expression (PromQL, or Grafana's `label_values(...)`).
    pub fn analyze(expr: &str) -> Result<Analysis, String> {
        let mut p = Parser {
            toks: tokenize(expr)?,
            pos: 0,
            out: Analysis::default(),
        };
        let top = p.expr()?;
        if p.pos != p.toks.len() {
            return Err(format!(
                "trailing input at token {}: {:?}",
                p.pos, p.toks[p.pos]
            ));
        }
        p.out.metrics = top.metrics;
        Ok(p.out)
    }

    #[test]
    fn reads_scopes_and_made_labels() {
        let a = analyze(
            r#"label_join(sum by (client, le) (rate(x_bucket{a="1", b=~"$v"}[$__range]) or y{c!=""}), "id", "-", "client") / on (d) group_left z offset 5m"#,
        )
        .unwrap();
        assert_eq!(
            a.metrics,
            ["x_bucket", "y", "z"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        let by: Vec<_> = a.labels.iter().filter(|u| u.kind == Kind::By).collect();
        assert_eq!(by.len(), 2);
        assert!(by
            .iter()
            .all(|u| u.metrics.len() == 2 && !u.metrics.contains("z")));
        let on = a.labels.iter().find(|u| u.kind == Kind::On).unwrap();
        assert_eq!(
            (on.label.as_str(), on.metrics.len(), on.made.contains("id")),
            ("d", 3, true)
        );
        assert!(analyze("frobnicate(x)").is_err());
        assert!(analyze(r#"{__name__="x"}"#).is_err());
        let lv =
            analyze(r#"label_values(m{k8s_namespace_name=~"$namespace"}, service_name)"#).unwrap();
        assert_eq!(lv.labels.len(), 2);
        assert_eq!(lv.labels[1].kind, Kind::LabelValues);
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dashboard() -> Value {
    let path = repo().join("deploy/grafana/observer-apm.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// (where, expression) of every query: panel targets and template-variable queries.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("target without expr");
            out.push((
                format!("panel {} ({}) {}", p["id"], p["title"], t["refId"]),
                expr.to_string(),
            ));
        }
    }
    for a in annotations(d) {
        out.push((
            format!("annotation {}", a["name"]),
            a["expr"]
                .as_str()
                .expect("annotation without expr")
                .to_string(),
        ));
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("query");
            assert_eq!(v["definition"].as_str(), Some(q), "variable {}", v["name"]);
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// The dashboard's Prometheus annotations (Grafana's built-in one left out).
fn annotations(d: &Value) -> Vec<&Value> {
    d["annotations"]["list"]
        .as_array()
        .expect("annotations")
        .iter()
        .filter(|a| a["builtIn"] != 1)
        .collect()
}

/// Parses a YAML file into JSON through python3's yaml (as tests/tests/deploy.rs does).
fn yaml(path: &std::path::Path) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Recording rules of deploy/rules/apm.rules.yaml: record name → the labels its expression
/// groups by (what its series carry, at most).
fn recording_rules() -> BTreeMap<String, BTreeSet<String>> {
    let rules = yaml(&repo().join("deploy/rules/apm.rules.yaml"));
    let mut out = BTreeMap::new();
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            if let Some(name) = r["record"].as_str() {
                let a = promql::analyze(r["expr"].as_str().unwrap()).unwrap();
                let by = a
                    .labels
                    .iter()
                    .filter(|u| u.kind == promql::Kind::By)
                    .map(|u| u.label.clone())
                    .collect();
                out.insert(name.to_string(), by);
            }
        }
    }
    out
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "observer-apm");
    let schema = d["schemaVersion"].as_u64().unwrap();
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    // Template variables: the data source, then namespace and service from the HTTP series.
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    assert_eq!(
        vars["namespace"]["definition"],
        "label_values(http_server_request_duration_seconds_count, k8s_namespace_name)"
    );
    assert!(vars["service"]["definition"]
        .as_str()
        .unwrap()
        .starts_with("label_values(http_server_request_duration_seconds_count"));
    assert!(vars["service"]["definition"]
        .as_str()
        .unwrap()
        .ends_with(", service_name)"));

    // Panels: unique ids, a gridPos each, inside the 24 columns, no two overlapping.
    let ps = panels(&d);
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, [u64; 4])> = Vec::new();
    let ds = serde_json::json!({ "type": "prometheus", "uid": "${datasource}" });
    for p in &ps {
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel without id: {}", p["title"]));
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("panel {id}: gridPos.{k}"))
        });
        assert!(w > 0 && h > 0 && x + w <= 24, "panel {id}: gridPos {g}");
        for (other, [oh, ow, ox, oy]) in &boxes {
            let apart = x + w <= *ox || ox + ow <= x || y + h <= *oy || oy + oh <= y;
            assert!(apart, "panels {id} and {other} overlap");
        }
        boxes.push((id, [h, w, x, y]));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], ds, "panel {id}");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {id}: no targets"));
        assert!(!targets.is_empty(), "panel {id}: no targets");
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "panel {id}: refIds not unique");
        for t in targets {
            assert_eq!(t["datasource"], ds, "panel {id} {}", t["refId"]);
        }
        // Table columns renamed from `Value #<refId>` name refIds of this panel.
        for tr in p["transformations"].as_array().into_iter().flatten() {
            for key in tr["options"]["renameByName"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.keys())
            {
                if let Some(r) = key.strip_prefix("Value #") {
                    assert!(
                        refs.contains(r),
                        "panel {id}: rename of {key}, no such query"
                    );
                }
            }
        }
    }
    let types: BTreeSet<&str> = ps.iter().filter_map(|p| p["type"].as_str()).collect();
    for t in ["timeseries", "heatmap", "nodeGraph", "table", "stat"] {
        assert!(types.contains(t), "no {t} panel");
    }
    // Lifecycle annotations: on the data source variable, and every label their title, text and
    // tags name is one the query keeps (its `sum by`).
    let anns = annotations(&d);
    assert_eq!(anns.len(), 5);
    for a in &anns {
        let name = &a["name"];
        assert_eq!(a["datasource"], ds, "annotation {name}");
        assert!(a["step"].is_string(), "annotation {name}");
        let by: BTreeSet<String> = promql::analyze(a["expr"].as_str().unwrap())
            .unwrap()
            .labels
            .into_iter()
            .filter(|u| u.kind == promql::Kind::By)
            .map(|u| u.label)
            .collect();
        let mut used: Vec<String> = a["tagKeys"]
            .as_str()
            .unwrap()
            .split(',')
            .map(String::from)
            .collect();
        for f in ["titleFormat", "textFormat"] {
            let text = a[f].as_str().unwrap();
            used.extend(
                text.split("{{")
                    .skip(1)
                    .filter_map(|t| t.split_once("}}"))
                    .map(|(l, _)| l.trim().to_string()),
            );
        }
        for l in used {
            assert!(
                by.contains(&l),
                "annotation {name}: {l} is not kept by {by:?}"
            );
        }
    }
    let heatmap = ps.iter().find(|p| p["type"] == "heatmap").unwrap();
    assert_eq!(heatmap["targets"][0]["format"], "heatmap");
    assert_eq!(heatmap["options"]["calculate"], false);
    // The node graph: edges with id, source, target, mainstat (label_join makes the id).
    let graph = ps.iter().find(|p| p["type"] == "nodeGraph").unwrap();
    let renames = &graph["transformations"][1]["options"]["renameByName"];
    assert_eq!(renames["client"], "source");
    assert_eq!(renames["server"], "target");
    assert_eq!(renames["Value #edges"], "mainstat");
    for t in graph["targets"].as_array().unwrap() {
        assert_eq!(t["format"], "table");
        assert_eq!(t["instant"], true);
        assert!(t["expr"].as_str().unwrap().starts_with("label_join("));
        assert!(t["expr"]
            .as_str()
            .unwrap()
            .contains(r#""id", " -> ", "client", "server")"#));
    }

    // Every query parses; the metrics the brief asks for are all shown; the recording rules read
    // are defined.
    let records = recording_rules();
    let mut metrics = BTreeSet::new();
    for (at, expr) in queries(&d) {
        let a = promql::analyze(&expr).unwrap_or_else(|e| panic!("{at}: {e}\n{expr}"));
        for m in a.metrics.iter().filter(|m| m.contains(':')) {
            assert!(
                records.contains_key(m),
                "{at}: {m} is no record: of apm.rules.yaml"
            );
        }
        metrics.extend(a.metrics);
    }
    for m in [
        "http_server_request_apdex_total",
        "http_server_request_duration_seconds_count",
        "http_server_request_duration_seconds_bucket",
        "http_server_active_clients",
        "traces_service_graph_request_total",
        "traces_service_graph_request_failed_total",
        "traces_service_graph_request_server_seconds_bucket",
        "observer_tcp_edge_connections_total",
        "observer_tcp_edge_connect_failures_total",
        "observer_tcp_edge_retransmits_total",
        "observer_tcp_edge_bytes_client_to_server_total",
        "observer_tcp_edge_bytes_server_to_client_total",
        "http_client_request_duration_seconds_count",
        "http_client_request_duration_seconds_bucket",
        "observer_probe_up",
        "observer_events_lost_total",
        "observer_l7_messages_unparsed_total",
        "service:http_server_apdex:ratio_rate1m",
        "observer_container_oom_kills_total",
        "observer_container_restarts_total",
        "observer_container_exits_total",
        "observer_kubernetes_events_total",
        "observer_workload_replicas",
    ] {
        assert!(metrics.contains(m), "the dashboard does not show {m}");
    }
    println!(
        "{} panels, {} queries, {} metrics",
        ps.len(),
        queries(&d).len(),
        metrics.len()
    );
}

/// Prometheus's own parser on every query: each becomes a recording rule of a file that
/// `promtool check rules` reads, with Grafana's variables replaced by values of their kind.
#[test]
fn dashboard_queries_pass_promtool() {
    let d = dashboard();
    let mut rules = Vec::new();
    for (i, (_, expr)) in queries(&d).into_iter().enumerate() {
        let expr = match expr.strip_prefix("label_values(") {
            // label_values(selector, label): the selector.
            Some(rest) => match rest.rsplit_once(',') {
                Some((sel, _)) => sel.to_string(),
                None => continue,
            },
            None => expr,
        };
        let mut e = expr;
        for (var, value) in [
            ("$__rate_interval", "2m"),
            ("$__range", "1h"),
            ("$__interval", "30s"),
            ("$namespace", ".*"),
            ("$service", ".*"),
        ] {
            e = e.replace(var, value);
        }
        assert!(!e.contains('$'), "unknown Grafana variable in {e}");
        rules
            .push(serde_json::json!({ "record": format!("dashboard:query_{i}:check"), "expr": e }));
    }
    let n = rules.len();
    let file = std::env::temp_dir().join(format!("observer-dashboard-{}.json", random_hex(8)));
    std::fs::write(
        &file,
        serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] }).to_string(),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    let _ = std::fs::remove_file(&file);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!("SUCCESS: {n} rules found")),
        "{report}"
    );
}

/// `kubectl kustomize deploy/grafana`: one ConfigMap for Grafana's dashboard sidecar, carrying
/// the JSON file as it is.
#[test]
fn grafana_kustomization_ships_the_dashboard() {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy/grafana"))
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let docs: Value = serde_json::from_slice(&py.wait_with_output().unwrap().stdout).unwrap();
    let docs = docs.as_array().unwrap();
    assert_eq!(docs.len(), 1);
    let cm = &docs[0];
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "observer");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let file = std::fs::read_to_string(repo().join("deploy/grafana/observer-apm.json")).unwrap();
    assert_eq!(
        cm["data"]["observer-apm.json"].as_str(),
        Some(file.as_str())
    );
}

/// Families the observer exports only after an OOM kill or from the Kubernetes API, neither of
/// which this test causes (tests/tests/lifecycle.rs and kubernetes.rs do, with exact counts).
const FROM_EVENTS: &[&str] = &[
    "observer_container_oom_kills_total",
    "observer_container_restarts_total",
    "observer_kubernetes_events_total",
    "observer_workload_replicas",
];

/// The label names the observer's collector (observer/src/export/metrics/, one file per family
/// group) gives a family's rows: the string literals `("name", ...)` of the call that encodes
/// it, the labels of `state_labels` where it calls that, and `identity` where it builds them
/// `with(id, ...)`. None when the source encodes no such family.
fn source_labels(family: &str, identity: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    let dir = repo().join("observer/src/export/metrics");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let src: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    // prometheus-client adds `_total` to counter names.
    let base = family.strip_suffix("_total").unwrap_or(family);
    let at = src.find(&format!("\"{base}\","))?;
    let rest = &src[at..];
    let end = ["\n    counter(", "\n    gauge(", "\n}\n"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    let literals = |text: &str| -> BTreeSet<String> {
        text.split("(\"")
            .skip(1)
            .filter_map(|t| t.split_once("\","))
            .map(|(l, _)| l.to_string())
            .filter(|l| {
                l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
            .collect()
    };
    let block = &rest[..end];
    let mut labels = literals(block);
    if block.contains("with(id") {
        labels.extend(identity.iter().cloned());
    }
    if block.contains("state_labels(") {
        let f = &src[src.find("fn state_labels")?..];
        labels.extend(literals(&f[..f.find("\n}\n")?]));
    }
    Some(labels)
}

/// The server: /ok answers 200, anything else 500, on keep-alive connections.
const SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        body = b"done\n"
        self.send_response(200 if self.path == "/ok" else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// The client: 8 × /ok and 2 × /fail on one keep-alive connection.
const CLIENT: &str = r#"
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=20)
for path in ["/ok"] * 8 + ["/fail"] * 2:
    c.request("GET", path)
    c.getresponse().read()
"#;

/// `# TYPE` lines: family → type.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The family a sample name belongs to, from the `# TYPE` lines.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
        ("_total", &["counter"][..]),
    ] {
        if let Some(f) = name.strip_suffix(suffix) {
            if types.get(f).is_some_and(|k| kinds.contains(&k.as_str())) {
                return Some(f);
            }
        }
    }
    None
}

#[test]
fn every_metric_and_label_of_the_dashboard_is_exported() {
    require_root();
    let dir = TempDir::new("dashboard").unwrap();
    let bridge = Bridge::new().unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    // Each side under its own executable name, so its service_name is known.
    let exe = |name: &str| {
        let p = dir.join(name);
        std::os::unix::fs::symlink("/usr/bin/python3", &p).unwrap();
        p
    };
    let obs = Observer::start(&[]).unwrap();
    let server_script = dir.write("server.py", SERVER).unwrap();
    server
        .spawn(&exe("dashserver"), &[&server_script, "8080"])
        .unwrap();
    server.wait_listening(8080).unwrap();
    // Let a cgroup walk learn the pods' addresses (every 2 s), so the edge is between workloads.
    std::thread::sleep(Duration::from_secs(3));
    let client_script = dir.write("client.py", CLIENT).unwrap();
    client
        .run(&exe("dashclient"), &[&client_script, &server.ip, "8080"])
        .unwrap();
    // A main process that exits with code 3 (observer_container_exits_total).
    let exit = client.run(&exe("dashexit"), &["-c", "import sys; sys.exit(3)"]);
    assert!(exit.is_err(), "the exit code is 3");

    let ours = |s: &[Sample], name: &str, label: &str, value: &str| {
        metrics::sum(s, name, &[(label, value)]) > 0.0
    };
    let samples = obs
        .scrape_until(Duration::from_secs(15), |s| {
            ours(
                s,
                "http_server_request_duration_seconds_count",
                "service_name",
                "dashserver",
            ) && ours(
                s,
                "http_client_request_duration_seconds_count",
                "service_name",
                "dashclient",
            ) && ours(
                s,
                "traces_service_graph_request_server_seconds_count",
                "client",
                "dashclient",
            ) && ours(
                s,
                "observer_tcp_edge_connections_total",
                "client",
                "dashclient",
            ) && ours(
                s,
                "observer_container_exits_total",
                "service_name",
                "dashexit",
            )
        })
        .unwrap();
    assert_eq!(
        metrics::sum(
            &samples,
            "http_server_request_duration_seconds_count",
            &[("service_name", "dashserver")]
        ),
        10.0,
        "the requests the client made"
    );
    let (_, _, text) = obs.get("/metrics", None).unwrap();
    let types = families(&text);
    let samples = metrics::parse(&text);
    // Sample name → every label name seen on it.
    let mut labels: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in &samples {
        labels
            .entry(&s.name)
            .or_default()
            .extend(s.labels.keys().map(String::as_str));
    }
    let records = recording_rules();
    // Rows built `with(id, ...)` carry the identity labels: those of the exits family here.
    let identity: BTreeSet<String> = labels
        .get("observer_container_exits_total")
        .map(|l| {
            l.iter()
                .filter(|l| **l != "reason")
                .map(|l| l.to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(identity.contains("k8s_pod_uid"), "{identity:?}");
    // The families that need events this test does not cause, from the source.
    let mut from_source: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for f in FROM_EVENTS {
        if !labels.contains_key(f) {
            match source_labels(f, &identity) {
                Some(l) => {
                    from_source.insert(f, l);
                }
                None => println!("{f}: not encoded by observer/src/export/metrics.rs"),
            }
        }
    }

    let d = dashboard();
    let mut problems = Vec::new();
    let (mut n_metrics, mut n_labels) = (BTreeSet::new(), 0);
    for (at, expr) in queries(&d) {
        let a = promql::analyze(&expr).unwrap_or_else(|e| panic!("{at}: {e}"));
        for m in &a.metrics {
            n_metrics.insert(m.clone());
            if m.contains(':') {
                if !records.contains_key(m) {
                    problems.push(format!("{at}: {m} is no record: of apm.rules.yaml"));
                }
            } else if from_source.contains_key(m.as_str()) {
                // Checked against the source (see FROM_EVENTS).
            } else if family_of(m, &types).is_none() {
                problems.push(format!("{at}: {m} is no family the observer exports"));
            } else if !labels.contains_key(m.as_str()) {
                problems.push(format!("{at}: {m} has no series after the traffic"));
            }
        }
        for u in &a.labels {
            n_labels += 1;
            if u.made.contains(&u.label) {
                continue;
            }
            let on = |m: &String| match records.get(m) {
                Some(by) => by.contains(&u.label),
                None => {
                    labels
                        .get(m.as_str())
                        .is_some_and(|l| l.contains(u.label.as_str()))
                        || from_source
                            .get(m.as_str())
                            .is_some_and(|l| l.contains(&u.label))
                }
            };
            let found = if u.metrics.is_empty() {
                labels.values().any(|l| l.contains(u.label.as_str()))
            } else {
                u.metrics.iter().any(on)
            };
            if !found {
                problems.push(format!(
                    "{at}: label {} ({:?}) is on no sample of {:?}",
                    u.label, u.kind, u.metrics
                ));
            }
        }
    }
    obs.stop().unwrap();
    println!(
        "{} queries, {} distinct metrics, {} label uses checked against {} samples",
        queries(&d).len(),
        n_metrics.len(),
        n_labels,
        samples.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
