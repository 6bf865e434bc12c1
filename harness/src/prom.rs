//! A small parser for the Prometheus text format that Envoy's `/stats/prometheus` (and the
//! sidecar's `/metrics`) serve, so tests and experiments read metric names, label sets and values
//! instead of matching strings.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `k`, if present.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }
}

/// Parses every sample line; comments and lines that do not parse are skipped.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let consumed;
        loop {
            // skip separators
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some(&(i, '}')) => {
                    consumed = i + 1;
                    break;
                }
                None => return None,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut val = String::new();
            loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    (_, '"') => break,
                    (_, c) => val.push(c),
                }
            }
            labels.insert(key.trim().to_string(), val);
        }
        rest = &after[consumed..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_and_values() {
        let s = parse_prometheus(
            "# TYPE x counter\nmeshbreaker_state{key=\"outbound|8080||r.d.svc\"} 1\n\
             a{b=\"q\\\"x\",c=\"\"} 2.5\nplain 7\n",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "meshbreaker_state");
        assert_eq!(s[0].label("key"), Some("outbound|8080||r.d.svc"));
        assert_eq!(s[0].value, 1.0);
        assert_eq!(s[1].label("b"), Some("q\"x"));
        assert_eq!(s[1].label("c"), Some(""));
        assert_eq!(s[2].labels.len(), 0);
        assert_eq!(s[2].value, 7.0);
    }
}
