//! Summaries of repeated measurements that ignore failed (NaN) rounds.

/// Median of `xs` (0 for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (min, max) of `xs` (0, 0 for none).
pub fn spread(xs: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 0.0);
    }
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// Reading back what serde_json wrote: it writes a NaN (a failed round) as `null`, and refuses to
/// read `null` as a number. These read `null` as NaN again, for `#[serde(deserialize_with)]`.
pub mod nan {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    fn or_nan(x: Option<f64>) -> f64 {
        x.unwrap_or(f64::NAN)
    }

    pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(or_nan(Option::deserialize(d)?))
    }

    pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?
            .into_iter()
            .map(or_nan)
            .collect())
    }

    pub fn three<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 3], D::Error> {
        Ok(<[Option<f64>; 3]>::deserialize(d)?.map(or_nan))
    }

    pub fn by_name<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        Ok(BTreeMap::<String, Option<f64>>::deserialize(d)?
            .into_iter()
            .map(|(k, x)| (k, or_nan(x)))
            .collect())
    }

    pub fn lists_by_name<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<f64>>, D::Error> {
        Ok(BTreeMap::<String, Vec<Option<f64>>>::deserialize(d)?
            .into_iter()
            .map(|(k, xs)| (k, xs.into_iter().map(or_nan).collect()))
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread_ignore_nan() {
        assert_eq!(median(&[3.0, 1.0, f64::NAN, 2.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(spread(&[2.0, 5.0, 1.0]), (1.0, 5.0));
        assert_eq!(median(&[]), 0.0);
    }
}
