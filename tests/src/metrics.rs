//! A small parser for the Prometheus text format, for assertions on /metrics.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses every sample line (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => continue,
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        let (name, labels) = match head.find('{') {
            Some(i) => (&head[..i], parse_labels(&head[i + 1..head.len() - 1])),
            None => (head, BTreeMap::new()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let eq = match s[i..].find('=') {
            Some(e) => i + e,
            None => break,
        };
        let key = s[i..eq].trim_start_matches(',').to_string();
        let mut j = eq + 2; // skip ="
        let mut val = String::new();
        while j < b.len() && b[j] != b'"' {
            if b[j] == b'\\' && j + 1 < b.len() {
                val.push(match b[j + 1] {
                    b'n' => '\n',
                    c => c as char,
                });
                j += 2;
            } else {
                val.push(b[j] as char);
                j += 1;
            }
        }
        m.insert(key, val);
        i = j + 1;
    }
    m
}

/// Sum of the samples named `name` whose labels include all of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    matching(samples, name, want).map(|s| s.value).sum()
}

/// The samples named `name` whose labels include all of `want`.
pub fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    want: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.name == name
            && want
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let t = "# HELP x y\nx_total{a=\"1\",b=\"q\\\"z\"} 3\ny 4.5\nh_bucket{le=\"+Inf\"} 7\n";
        let s = parse(t);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels["b"], "q\"z");
        assert_eq!(sum(&s, "x_total", &[("a", "1")]), 3.0);
        assert_eq!(sum(&s, "y", &[]), 4.5);
        assert_eq!(sum(&s, "x_total", &[("a", "2")]), 0.0);
    }
}
